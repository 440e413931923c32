"""What an ARCHIVE-mode backup (`backup` without `--stream`) does besides copying files.

Such a backup holds no WAL: its start..stop segments reach the catalog's
archive `wal/<instance>/` through the server's archive_command (archive-push).
pg_probackup 2.5.16's steps, kept here:

* refuse a server that does not archive (instead of waiting in vain);
* after pg_backup_start(): pg_switch_wal(), then wait until the segment
  holding the start LSN is in the archive;
* after pg_backup_stop(): wait until the segment holding the stop LSN is
  archived (here: every segment from start to stop, in order);
* recovery-time = time of the last commit/abort/restore-point record between
  start and stop LSN in the archived WAL (whole seconds), else the time the
  server reported at stop;
* wal-bytes = (stop segment - start segment) x segment size, at least one
  segment (pg_probackup's estimate of the archived WAL the backup needs).

One difference that leaves no trace in the catalog: the temporary replication
slot the --stream path takes is taken here too (it only keeps the server from
recycling WAL while the backup runs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import psycopg

from pbkfs.catalog.lsn import wal_segment_name
from pbkfs.errors import CatalogError, PbkfsError
from pbkfs.walarchive.archive import WalArchive
from pbkfs.walarchive.records import iter_records, restore_point, xact_time
from tools.mkbackup.errors import ServerError
from tools.mkbackup.pgconn import PgConnection

POLL_SECONDS = 0.2


def check_archiving(conn: PgConnection, archive: Path) -> None:
    """ServerError unless the server archives WAL (archive_mode on, an archive_command)."""
    try:
        row = conn.conn.execute(
            "SELECT current_setting('archive_mode'), current_setting('archive_command')"
        ).fetchone()
    except psycopg.Error as exc:
        raise ServerError(f"cannot read archive settings: {exc}") from None
    assert row is not None
    mode, command = str(row[0]), str(row[1] or "")
    if mode not in ("on", "always"):
        raise ServerError(f"archive_mode is {mode!r}: a backup without --stream needs the server "
                          "to archive WAL into the catalog (archive_mode = on, archive_command ="
                          " archive-push); or use --stream")
    if not command.strip() or command.strip() == "(disabled)":
        raise ServerError("archive_command is empty: a backup without --stream needs the "
                          "server to archive WAL into the catalog; or use --stream")
    if not archive.is_dir():
        raise CatalogError(archive, "WAL archive directory is not accessible")


def _archived(archive: Path, name: str) -> bool:
    return (archive / name).is_file() or (archive / (name + ".gz")).is_file()


def _archiver_state(conn: PgConnection) -> str:
    try:
        row = conn.conn.execute(
            "SELECT last_archived_wal, failed_count, last_failed_wal FROM pg_stat_archiver"
        ).fetchone()
    except psycopg.Error:
        return ""
    if row is None:
        return ""
    return (f" (pg_stat_archiver: last archived {row[0] or 'none'}, {row[1]} failure(s),"
            f" last failed {row[2] or 'none'})")


def wait_archived(
    conn: PgConnection,
    archive: Path,
    *,
    tli: int,
    first_lsn: int,
    last_lsn: int,
    seg_size: int,
    timeout: float,
    info: Callable[[str], None],
) -> None:
    """Wait until every segment holding first_lsn .. last_lsn is in the archive, in order."""
    deadline = time.monotonic() + timeout
    for segno in range(first_lsn // seg_size, last_lsn // seg_size + 1):
        name = wal_segment_name(tli, segno * seg_size, seg_size)
        told = False
        while not _archived(archive, name):
            if time.monotonic() > deadline:
                raise CatalogError(archive / name, f"WAL segment {name} was not archived in "
                                   f"{timeout:g} seconds{_archiver_state(conn)}")
            if not told:
                info(f"wait for WAL segment {archive / name} to be archived")
                told = True
            time.sleep(POLL_SECONDS)


def recovery_time_from_wal(
    archive: Path,
    *,
    tli: int,
    start_lsn: int,
    stop_lsn: int,
    seg_size: int,
    xlog_blcksz: int,
) -> datetime | None:
    """Time of the last timestamped record (commit, abort, restore point) in
    [start_lsn, stop_lsn] of the archived WAL; None when there is none or it cannot be read."""
    wal = WalArchive(archive, seg_size, xlog_blcksz=xlog_blcksz)
    try:
        segments = [
            (segno, wal.fetch(wal_segment_name(tli, segno * seg_size, seg_size))[0])
            for segno in range(start_lsn // seg_size, stop_lsn // seg_size + 1)
        ]
    except PbkfsError:
        return None
    last: datetime | None = None
    for rec in iter_records(segments, seg_size, xlog_blcksz):
        if rec.lsn > stop_lsn:
            break
        if rec.lsn < start_lsn:
            continue
        when = xact_time(rec)
        if when is None:
            point = restore_point(rec)
            when = point[1] if point is not None else None
        if when is not None:
            last = when
    return last


def archived_wal_bytes(start_lsn: int, stop_lsn: int, seg_size: int) -> int:
    """backup.control's wal-bytes for an ARCHIVE backup."""
    return max(stop_lsn // seg_size - start_lsn // seg_size, 1) * seg_size
