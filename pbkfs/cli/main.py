"""The `pbkfs` command: a click group; each subcommand lives in its own module."""

from __future__ import annotations

import sys

import click

from pbkfs import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pbkfs")
def cli() -> None:
    """Mount pg_probackup backups as live, writable PostgreSQL data directories."""


from pbkfs.cli.archive_get import archive_get  # noqa: E402
from pbkfs.cli.show import show  # noqa: E402
from pbkfs.cli.verify import verify  # noqa: E402

cli.add_command(archive_get)
cli.add_command(show)
cli.add_command(verify)

from pbkfs.cli.mount import mount, unmount  # noqa: E402

cli.add_command(mount)
cli.add_command(unmount)

from pbkfs.cli.cleanup import cleanup  # noqa: E402

cli.add_command(cleanup)

from pbkfs.cli.stat import stat  # noqa: E402

cli.add_command(stat)


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="pbkfs")


if __name__ == "__main__":
    main()
    sys.exit(0)
