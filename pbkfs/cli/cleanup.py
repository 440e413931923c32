"""`pbkfs cleanup -d DIFF [--force]`: wipe a diff directory and its binding."""

from __future__ import annotations

import click

from pbkfs.cli.common import reports_errors


@click.command("cleanup")
@click.option("-d", "--diff-dir", "diff", required=True, type=click.Path(path_type=str),
              help="The diff directory to wipe (kept, empty).")
@click.option("--force", is_flag=True,
              help="Also wipe a broken diff (no or damaged binding) or one locked from another "
                   "host. A diff a live mount uses is never wiped.")
@reports_errors
def cleanup(diff: str, force: bool) -> None:
    """Delete everything a diff directory holds (all changes made through its mounts)."""
    from pbkfs.mount.cleanup import wipe

    for line in wipe(diff, force=force):
        click.echo(line)
