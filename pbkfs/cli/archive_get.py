"""`pbkfs archive-get`: PostgreSQL's restore_command, fed from a pg_probackup WAL archive.

Same grammar as `pg_probackup archive-get`:

    restore_command = '"pbkfs" archive-get -B "<catalog>" --instance "<name>"
                       --wal-file-path=%p --wal-file-name=%f'

It finds the segment (or history file) in `wal/<instance>/`, decompresses it,
checks it is the segment it is named after, and writes it atomically to
`%p`. Exit status 0 when delivered; 1 when the archive has no copy (what
PostgreSQL expects at the end of the archive, and for history files that do
not exist); 2 when every copy is damaged or the catalog is unusable. It never
writes to the catalog.
"""

from __future__ import annotations

import sys

import click

from pbkfs.cli.common import object_store_options, store_option

EXIT_MISSING = 1
EXIT_DAMAGED = 2


@click.command("archive-get")
@store_option
@click.option("--instance", required=True, help="The instance whose WAL archive to read.")
@click.option("--wal-file-path", "wal_file_path", required=True, metavar="%p",
              help="Where to write the file (relative to the server's data directory).")
@click.option("--wal-file-name", "wal_file_name", required=True, metavar="%f",
              help="The file PostgreSQL asks for (segment or history file name).")
@object_store_options
def archive_get(store: str, instance: str, wal_file_path: str, wal_file_name: str) -> None:
    """Deliver one WAL file from the catalog's archive to PostgreSQL (for restore_command)."""
    from pbkfs.catalog.store import Store
    from pbkfs.errors import PbkfsError
    from pbkfs.walarchive.archive import WalArchive, WalNotFound
    from pbkfs.walarchive.deliver import write_atomically

    try:
        archive = WalArchive.for_instance(Store(store).instance(instance))
        data, copy = archive.fetch(wal_file_name)
        write_atomically(wal_file_path, data)
    except WalNotFound as exc:
        click.echo(f"pbkfs archive-get: {wal_file_name}: not in the WAL archive "
                   f"({exc.path})", err=True)
        sys.exit(EXIT_MISSING)
    except PbkfsError as exc:
        click.echo(f"pbkfs archive-get: error: {wal_file_name}: {exc}", err=True)
        sys.exit(EXIT_DAMAGED)
    click.echo(f"pbkfs archive-get: delivered {wal_file_name} from {copy.path.name}", err=True)
