"""The `pbkfs` command: a click group; each subcommand lives in its own module.

Subcommands are imported when used: `pbkfs mount` does not pay for the imports of `show`
or `verify` (the mount command's start-up time is part of what a user waits for)."""

from __future__ import annotations

import importlib
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
    "stat": "pbkfs.cli.stat:stat",
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
    """Console-script entry point."""
    cli.main(prog_name="pbkfs")


if __name__ == "__main__":
    main()
    sys.exit(0)
