"""Command line, in pg_probackup's own grammar (so anyone who knows pg_probackup knows it).

    python -m tools.mkbackup init -B STORE
    python -m tools.mkbackup add-instance -B STORE --instance NAME -D PGDATA
    python -m tools.mkbackup backup -B STORE --instance NAME -b FULL|DELTA [--stream] \\
        [--compress-algorithm none|zlib|pglz] [--compress-level N] [-j N] \\
        [-h HOST] [-p PORT] [-U USER] [-d DBNAME] [--archive-timeout SECONDS]
    python -m tools.mkbackup archive-push -B STORE --instance NAME \\
        --wal-file-path=%p --wal-file-name=%f [--compress-algorithm none|zlib] [--overwrite]

Without --stream a backup is ARCHIVE mode: it holds no WAL, the server's
archive_command must be this archive-push into the same catalog.

Messages go to stderr (`INFO: ...`, `ERROR: ...`); `backup` prints the new
backup id alone on stdout, so scripts can capture it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pbkfs.errors import PbkfsError, UsageError
from tools.mkbackup.archive import (
    DEFAULT_ARCHIVE_TIMEOUT,
    WAL_ALGORITHMS,
    PushOptions,
    archive_push,
)
from tools.mkbackup.backup import ALGORITHMS, BackupOptions, run_backup
from tools.mkbackup.instance import add_instance, init_catalog
from tools.mkbackup.progress import Reporter

_STORE = click.option(
    "-B", "--backup-path", "store", required=True, type=click.Path(path_type=Path),
    help="Backup catalog directory.",
)
_INSTANCE = click.option("--instance", required=True, help="Instance name inside the catalog.")


def _fail(exc: PbkfsError) -> None:
    click.echo(f"ERROR: {exc}", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["--help"]})
def main() -> None:
    """Write pg_probackup 2.5-format backups of a running PostgreSQL 15.

    For tests, demos and benchmarks of pbkfs: the catalogs it writes are the
    ones pg_probackup 2.5.16 writes (FULL and DELTA, STREAM or ARCHIVE,
    none/zlib/pglz), and its WAL archive (archive-push).
    """


@main.command("init")
@_STORE
def init_cmd(store: Path) -> None:
    """Create an empty backup catalog."""
    try:
        init_catalog(store)
    except PbkfsError as exc:
        _fail(exc)
    click.echo(f"INFO: Backup catalog '{store}' successfully initialized", err=True)


@main.command("add-instance")
@_STORE
@_INSTANCE
@click.option(
    "-D", "--pgdata", required=True, type=click.Path(path_type=Path),
    help="Data directory of the cluster (read for its system identifier and WAL segment size).",
)
def add_instance_cmd(store: Path, instance: str, pgdata: Path) -> None:
    """Register a PostgreSQL data directory as an instance of the catalog."""
    try:
        add_instance(store, instance, pgdata)
    except PbkfsError as exc:
        _fail(exc)
    click.echo(f"INFO: Instance '{instance}' successfully initialized", err=True)


@main.command("backup")
@_STORE
@_INSTANCE
@click.option(
    "-b", "--backup-mode", "mode", required=True,
    type=click.Choice(["FULL", "DELTA", "PAGE", "PTRACK"], case_sensitive=False),
    help="FULL, or DELTA (pages changed since the newest valid backup).",
)
@click.option(
    "--stream", is_flag=True,
    help="Include the WAL in the backup; without it the WAL is taken from the catalog's archive.",
)
@click.option(
    "--compress-algorithm", "compress_alg", default=None,
    type=click.Choice(ALGORITHMS, case_sensitive=False), help="Page compression (default none).",
)
@click.option("--compress-level", default=1, show_default=True, type=int)
@click.option("--compress", is_flag=True, help="Same as --compress-algorithm=zlib.")
@click.option("-j", "--threads", default=1, show_default=True, type=int, help="Worker threads.")
@click.option("-h", "--pghost", "host", default=None, help="Server host or socket directory.")
@click.option("-p", "--pgport", "port", default=None, type=int, help="Server port.")
@click.option("-U", "--pguser", "user", default=None, help="User (must be a superuser).")
@click.option("-d", "--pgdatabase", "dbname", default=None, help="Database to connect to.")
@click.option(
    "-D", "--pgdata", default=None, type=click.Path(path_type=Path),
    help="Override the instance's data directory.",
)
@click.option("--no-sync", is_flag=True, help="Do not fsync the written files.")
@click.option("--temp-slot", is_flag=True, help="Accepted for compatibility (always used).")
@click.option("--progress", is_flag=True, help="Accepted for compatibility (bar on a terminal).")
@click.option(
    "--archive-timeout", default=DEFAULT_ARCHIVE_TIMEOUT, show_default=True, type=int,
    help="Seconds to wait for a WAL segment to be archived (without --stream).",
)
@click.option("-q", "--quiet", is_flag=True, help="Only errors and the backup id.")
def backup_cmd(
    store: Path,
    instance: str,
    mode: str,
    stream: bool,
    compress_alg: str | None,
    compress_level: int,
    compress: bool,
    threads: int,
    host: str | None,
    port: int | None,
    user: str | None,
    dbname: str | None,
    pgdata: Path | None,
    no_sync: bool,
    temp_slot: bool,
    progress: bool,
    archive_timeout: int,
    quiet: bool,
) -> None:
    """Take an online backup of a running PostgreSQL 15."""
    del temp_slot, progress
    try:
        mode = mode.upper()
        if mode in ("PAGE", "PTRACK"):
            raise UsageError(f"-b {mode}: only FULL and DELTA backups can be written")
        alg = (compress_alg or ("zlib" if compress else "none")).lower()
        opts = BackupOptions(
            mode=mode, compress_alg=alg, compress_level=compress_level, threads=threads,
            host=host, port=port, user=user, dbname=dbname, pgdata=pgdata, sync=not no_sync,
            stream=stream, archive_timeout=archive_timeout,
        )
        result = run_backup(store, instance, opts, Reporter(quiet=quiet))
    except PbkfsError as exc:
        _fail(exc)
    click.echo(result.backup_id)


@main.command("archive-push")
@_STORE
@_INSTANCE
@click.option("--wal-file-path", "wal_file_path", default=None, metavar="%p",
              help="The file to archive, relative to the data directory (the working directory).")
@click.option("--wal-file-name", "wal_file_name", required=True, metavar="%f",
              help="Its name in the archive.")
@click.option(
    "--compress-algorithm", "compress_alg", default=None,
    type=click.Choice((*WAL_ALGORITHMS, "pglz"), case_sensitive=False),
    help="zlib: segments stored as .gz (default none).",
)
@click.option("--compress-level", default=1, show_default=True, type=int)
@click.option("--compress", is_flag=True, help="Same as --compress-algorithm=zlib.")
@click.option("--overwrite", is_flag=True, help="Replace an archived file with other content.")
@click.option("--no-sync", is_flag=True, help="Do not fsync the archived file.")
@click.option(
    "--archive-timeout", default=DEFAULT_ARCHIVE_TIMEOUT, show_default=True, type=int,
    help="Seconds to wait for another push's temp file before taking it over.",
)
def archive_push_cmd(
    store: Path,
    instance: str,
    wal_file_path: str | None,
    wal_file_name: str,
    compress_alg: str | None,
    compress_level: int,
    compress: bool,
    overwrite: bool,
    no_sync: bool,
    archive_timeout: int,
) -> None:
    """Copy one WAL file into the catalog's archive (archive_command; runs in PGDATA)."""
    try:
        alg = (compress_alg or ("zlib" if compress else "none")).lower()
        opts = PushOptions(compress_alg=alg, compress_level=compress_level, overwrite=overwrite,
                           sync=not no_sync, archive_timeout=archive_timeout)
        click.echo(f"INFO: archive-push WAL file: {wal_file_name}, compression: {alg}", err=True)
        result = archive_push(
            store.absolute(), instance, wal_file_name, wal_file_path, opts,
            log=lambda msg: click.echo(f"LOG: {msg}", err=True),
        )
    except PbkfsError as exc:
        _fail(exc)
    click.echo(
        f"INFO: archive-push completed successfully, pushed: {int(result.pushed)}, skipped: "
        f"{int(not result.pushed)}", err=True,
    )
