"""`python -m tools.blockmap`: options, then state -> report -> the chosen format."""

from __future__ import annotations

import os
import sys

import click

from pbkfs.cli.common import reports_errors
from pbkfs.errors import UsageError
from tools.blockmap.report import build_report

FORMATS = ("text", "json", "svg", "png")


@click.command("blockmap", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--mount", "mountpoint", type=click.Path(path_type=str),
              help="A live pbkfs mount (block maps from its shared memory).")
@click.option("--diff", "diff", type=click.Path(path_type=str),
              help="A diff directory, read offline (block maps from its objects/*.map).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=str),
              help="Write here instead of standard output.")
@click.option("-B", "--backup-path", "store", type=click.Path(file_okay=False, path_type=str),
              help="The catalog, if it moved since the diff was bound to it.")
@click.argument("paths", nargs=-1)
@reports_errors
def main(mountpoint: str | None, diff: str | None, fmt: str, output: str | None,
         store: str | None, paths: tuple[str, ...]) -> None:
    """Show which backup each block of each file comes from and which blocks the diff holds.

    PATH is relative to the data directory (a file, or a directory for everything in it).
    """
    from tools.blockmap.live import find_mount, shm_maps
    from tools.blockmap.state import load_state

    if (mountpoint is None) == (diff is None):
        raise UsageError("give exactly one of --mount MNT or --diff DIFF")
    if mountpoint is not None:
        rec = find_mount(mountpoint)
        state = load_state(rec.diff, store)
        live = shm_maps(rec.shm)
        # Published maps are the live ones; objects no worker has open keep their map file.
        state.maps.update(live)
        rep = build_report(state, list(paths), "live", rec.mountpoint)
    else:
        assert diff is not None
        state = load_state(diff, store)
        rep = build_report(state, list(paths), "offline", None)
    state.source.close()
    data = render(rep, fmt)
    if output:
        tmp = f"{output}.tmp.{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, output)
    else:
        if fmt == "png" and sys.stdout.isatty():
            raise UsageError("--format png writes binary data: give -o FILE")
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def render(rep: object, fmt: str) -> bytes:
    import msgspec

    from tools.blockmap.report import Report

    assert isinstance(rep, Report)
    if fmt == "json":
        return msgspec.json.format(msgspec.json.encode(rep), indent=1) + b"\n"
    if fmt == "svg":
        from tools.blockmap.svg import render_svg

        return render_svg(rep)
    if fmt == "png":
        from tools.blockmap.png import render_png

        return render_png(rep)
    from tools.blockmap.text import render_text

    return render_text(rep).encode()
