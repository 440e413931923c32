"""The `pbkfs` command: a click group; each subcommand lives in its own module.

Subcommands are imported when used: `pbkfs mount` does not pay for the imports of `show`
or `verify` (the mount command's start-up time is part of what a user waits for)."""

from __future__ import annotations

import importlib
import os
import sys

import click

from pbkfs import __version__

COMMANDS = {
    "archive-get": "pbkfs.cli.archive_get:archive_get",
    "show": "pbkfs.cli.show:show",
    "verify": "pbkfs.cli.verify:verify",
    "mount": "pbkfs.cli.mount:mount",
    "unmount": "pbkfs.cli.mount:unmount",
    "cleanup": "pbkfs.cli.cleanup:cleanup",
    "reset": "pbkfs.cli.reset:reset",
    "drill": "pbkfs.cli.drill:drill",
    "stat": "pbkfs.cli.stat:stat",
    "list": "pbkfs.cli.list_cmd:list_cmd",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pbkfs")
def cli() -> None:
    """Mount pg_probackup backups as live, writable PostgreSQL data directories."""


def main() -> None:
    """Console-script entry point.

    Exits without tearing the interpreter down: freeing a parsed catalog's objects one by
    one took 30-50 ms after `pbkfs mount` had done its work (part of what a user waits for).
    Output and log handlers are flushed first; no command leaves threads or files open."""
    from pbkfs.mount.launch import abandon_early

    try:
        cli.main(prog_name="pbkfs")
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    abandon_early()
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    main()
    sys.exit(0)
