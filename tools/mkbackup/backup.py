"""`backup -b FULL|DELTA [--stream]`: one online backup, start to finish.

Order of events (pg_probackup 2.5.16's, minus what --stream with a temporary
slot makes unnecessary):

1. checks: server reachable, superuser, PostgreSQL 15, PGDATA really is the
   server's data directory; for DELTA a usable parent;
2. backup directory with backup.control `status = RUNNING`;
3. temporary slot + pg_backup_start(label, fast) -> start LSN;
4. PGDATA listed and copied (datafiles as page streams, -j workers),
   pg_control last;
5. pg_backup_stop() -> stop LSN, backup_label, tablespace_map; WAL
   start..stop copied into database/pg_wal (--stream), or waited for in the
   catalog's WAL archive (ARCHIVE mode, see archive_backup.py);
6. backup_label, tablespace_map, database_map, backup_content.control (its
   CRC into backup.control), then `status = OK`.

Any failure after step 2 rewrites backup.control with `status = ERROR` before
the error is reported, so a half-written backup is never taken for a good one.
"""

from __future__ import annotations

import errno
import os
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from pbkfs.catalog.ids import encode_id
from pbkfs.catalog.lsn import format_lsn
from pbkfs.catalog.pgcontrol import ControlData, read_pg_control
from pbkfs.codecs.crc import crc32c
from pbkfs.errors import CatalogError, PbkfsError, UsageError
from tools.mkbackup.archive import DEFAULT_ARCHIVE_TIMEOUT, archive_dir
from tools.mkbackup.archive_backup import (
    archived_wal_bytes,
    check_archiving,
    recovery_time_from_wal,
    wait_archived,
)
from tools.mkbackup.catalogfiles import (
    S_IFREG,
    BackupControl,
    ContentEntry,
    format_time,
    write_file,
)
from tools.mkbackup.delta import ParentBackup, find_parent
from tools.mkbackup.errors import DiskFullError
from tools.mkbackup.headermap import HeaderMapWriter, pack_region
from tools.mkbackup.instance import DIR_MODE, Instance, load_instance
from tools.mkbackup.listing import SourceFile, list_pgdata, pgdata_bytes
from tools.mkbackup.nondata import backup_nondata_file, backup_pg_control
from tools.mkbackup.pagestream import StreamParams, backup_datafile
from tools.mkbackup.pgconn import PgConnection, ServerInfo
from tools.mkbackup.progress import Reporter
from tools.mkbackup.walstream import copy_wal

MODES = ("FULL", "DELTA")
ALGORITHMS = ("none", "zlib", "pglz")
LABEL_FILE_MODE = S_IFREG | 0o644  # backup_label, tablespace_map, database_map


@dataclass
class BackupOptions:
    mode: str = "FULL"
    compress_alg: str = "none"
    compress_level: int = 1
    threads: int = 1
    host: str | None = None
    port: int | None = None
    user: str | None = None
    dbname: str | None = None
    pgdata: Path | None = None  # overrides the instance's pgdata
    sync: bool = True
    stream: bool = True  # False: ARCHIVE mode, the WAL comes from the catalog's archive
    archive_timeout: int = DEFAULT_ARCHIVE_TIMEOUT  # seconds to wait for a segment

    def validate(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"-b/--backup-mode: {self.mode!r} is not one of {', '.join(MODES)}")
        if self.compress_alg not in ALGORITHMS:
            raise UsageError(
                f"--compress-algorithm: {self.compress_alg!r} is not one of {', '.join(ALGORITHMS)}"
            )
        if not 0 <= self.compress_level <= 9:
            raise UsageError(f"--compress-level: {self.compress_level} is not in 0..9")
        if self.threads < 1:
            raise UsageError(f"-j/--threads: {self.threads} must be at least 1")
        if self.archive_timeout < 1:
            raise UsageError(f"--archive-timeout: {self.archive_timeout} must be at least 1")


@dataclass
class BackupResult:
    backup_id: str
    backup_dir: Path
    control: BackupControl
    n_entries: int
    seconds: float


def _is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _new_start_time(backups_dir: Path) -> int:
    """A start time whose id is not taken yet (ids have a one-second resolution)."""
    while True:
        now = time.time()
        start = int(now)
        if not (backups_dir / encode_id(start)).exists():
            return start
        time.sleep(1.0 - (now - start) + 0.01)


def check_pgdata(inst: Instance, pgdata: Path, info: ServerInfo) -> ControlData:
    """Prove `pgdata` is the data directory of the server we are connected to."""
    control = read_pg_control(pgdata)
    if control.system_identifier != info.system_identifier:
        raise CatalogError(
            pgdata,
            f"wrong PGDATA: its system identifier is {control.system_identifier}, the"
            f" connected server's is {info.system_identifier}",
        )
    if inst.system_identifier != info.system_identifier:
        raise CatalogError(
            inst.backups_dir / "pg_probackup.conf",
            f"instance {inst.name!r} was added for system identifier {inst.system_identifier},"
            f" the connected server's is {info.system_identifier}",
        )
    if os.path.realpath(pgdata) != os.path.realpath(info.data_directory):
        raise CatalogError(
            pgdata, f"wrong PGDATA: the connected server runs on {info.data_directory}"
        )
    return control


class _Run:
    """State of one backup run (kept together so the ERROR path can reach it)."""

    def __init__(
        self, inst: Instance, opts: BackupOptions, conn: PgConnection, reporter: Reporter
    ) -> None:
        self.inst = inst
        self.opts = opts
        self.conn = conn
        self.reporter = reporter
        self.pgdata = opts.pgdata or inst.pgdata
        self.parent: ParentBackup | None = None
        self.ctl: BackupControl | None = None
        self.backup_dir: Path | None = None

    @property
    def archive(self) -> Path:
        return archive_dir(self.inst.store, self.inst.name)

    def wait_archived(self, first_lsn: int, last_lsn: int) -> None:
        assert self.ctl is not None
        wait_archived(
            self.conn, self.archive, tli=self.ctl.timeline, first_lsn=first_lsn,
            last_lsn=last_lsn, seg_size=self.inst.xlog_seg_size,
            timeout=self.opts.archive_timeout, info=self.reporter.info,
        )

    @property
    def database(self) -> Path:
        assert self.backup_dir is not None
        return self.backup_dir / "database"

    def write_control(self) -> None:
        assert self.ctl is not None and self.backup_dir is not None
        write_file(self.backup_dir / "backup.control", self.ctl.render(), sync=self.opts.sync)

    # -- steps ----------------------------------------------------------------

    def prepare(self) -> tuple[ServerInfo, ControlData]:
        info = self.conn.server_info()
        self.conn.check_can_backup(info)
        control = check_pgdata(self.inst, self.pgdata, info)
        if not self.opts.stream:
            check_archiving(self.conn, self.archive)
        if self.opts.mode == "DELTA":
            tli = self.conn.current_timeline()
            self.parent = find_parent(self.inst.backups_dir, tli, control.block_size)
        return info, control

    def create(self, info: ServerInfo, control: ControlData) -> None:
        start = _new_start_time(self.inst.backups_dir)
        self.ctl = BackupControl(
            backup_mode=self.opts.mode,
            start_time=start,
            compress_alg=self.opts.compress_alg,
            compress_level=self.opts.compress_level,
            stream=self.opts.stream,
            block_size=control.block_size,
            xlog_block_size=control.xlog_block_size,
            checksum_version=control.data_checksum_version,
            server_version=str(info.version_num // 10000),
            parent_backup_id=self.parent.backup_id if self.parent else None,
            primary_conninfo=self.conn.conninfo_string(),
        )
        self.backup_dir = self.inst.backups_dir / self.ctl.backup_id
        self.backup_dir.mkdir(mode=DIR_MODE)
        # Like pg_probackup: a lock file naming the live writer, so readers keep away.
        write_file(self.backup_dir / "backup.pid", f"{os.getpid()}\n", sync=False)
        self.database.mkdir(mode=DIR_MODE)
        self.write_control()

    def unlock(self) -> None:
        if self.backup_dir is not None:
            (self.backup_dir / "backup.pid").unlink(missing_ok=True)

    def body(self, control: ControlData) -> list[ContentEntry]:
        assert self.ctl is not None and self.backup_dir is not None
        ctl, opts, rep = self.ctl, self.opts, self.reporter
        label = f"{format_time(ctl.start_time)} with pg_probackup"
        slot = f"mkbackup_{os.getpid()}_{ctl.backup_id.lower()}"
        rep.info("wait for pg_backup_start()")
        ctl.start_lsn, ctl.timeline = self.conn.start_backup(label, slot)
        self.write_control()
        rep.info(f"start LSN: {format_lsn(ctl.start_lsn)}, timeline: {ctl.timeline}")
        if not opts.stream:
            # pg_probackup: switch WAL, wait for the start segment to be archived.
            self.conn.switch_wal_past(ctl.start_lsn, self.inst.xlog_seg_size)
            self.wait_archived(ctl.start_lsn, ctl.start_lsn)

        files = list_pgdata(self.pgdata)
        ctl.pgdata_bytes = pgdata_bytes(files)
        rep.info(f"PGDATA size: {_human(ctl.pgdata_bytes)} in {len(files)} entries")
        for f in files:
            if f.is_dir:
                (self.database / f.rel).mkdir(mode=DIR_MODE, parents=True, exist_ok=True)

        entries: dict[str, ContentEntry] = {}
        for f in files:
            if f.is_dir:
                entries[f.rel] = ContentEntry(f.rel, 0, f.mode, db_oid=f.db_oid)
        control_file = next(
            (f for f in files if f.rel == "global/pg_control" and not f.is_dir), None
        )
        regular = [f for f in files if not f.is_dir and f is not control_file]
        params = StreamParams(
            blcksz=control.block_size,
            relseg_size=control.relseg_size,
            verify_checksums=control.data_checksum_version != 0,
            compress_alg=opts.compress_alg,
            compress_level=opts.compress_level,
        )
        t0 = time.monotonic()
        rep.info(f"transferring data files with {opts.threads} thread(s)")
        rep.start("Backing up", sum(f.size for f in regular))
        self._copy_files(regular, params, entries)
        rep.stop()
        rep.info(f"data files transferred, time elapsed: {time.monotonic() - t0:.1f}s")

        if control_file is None:
            raise CatalogError(self.pgdata, "global/pg_control vanished during the backup")
        r = backup_pg_control(control_file.full, str(self.database / control_file.rel), opts.sync)
        entries[control_file.rel] = ContentEntry(
            control_file.rel, r.write_size, control_file.mode, crc=r.crc
        )

        rep.info("wait for pg_backup_stop()")
        stop = self.conn.stop_backup()
        ctl.stop_lsn = stop.stop_lsn
        ctl.recovery_xid = stop.recovery_xid
        ctl.recovery_time = stop.recovery_time
        rep.info(f"stop LSN: {format_lsn(stop.stop_lsn)}")
        self.conn.switch_wal_past(stop.stop_lsn, self.inst.xlog_seg_size)

        ordered = [entries[f.rel] for f in sorted(files, key=lambda f: (f.size, f.rel))
                   if f.rel in entries]
        ordered.append(self._add_file("backup_label", stop.labelfile.encode()))
        if stop.spcmapfile:
            ordered.append(self._add_file("tablespace_map", stop.spcmapfile.encode()))
        wal_dir = self.database / "pg_wal"
        wal_dir.mkdir(mode=DIR_MODE, exist_ok=True)
        if opts.stream:
            wal = copy_wal(
                self.pgdata, wal_dir, tli=ctl.timeline, start_lsn=ctl.start_lsn,
                stop_lsn=stop.stop_lsn, seg_size=self.inst.xlog_seg_size,
                system_identifier=control.system_identifier, sync=opts.sync,
            )
            for w in wal:
                ordered.append(ContentEntry(f"pg_wal/{w.name}", w.size, w.mode, crc=w.crc))
        else:
            self.wait_archived(ctl.start_lsn, stop.stop_lsn)
            when = recovery_time_from_wal(
                self.archive, tli=ctl.timeline, start_lsn=ctl.start_lsn,
                stop_lsn=stop.stop_lsn, seg_size=self.inst.xlog_seg_size,
                xlog_blcksz=control.xlog_block_size,
            )
            if when is not None:
                ctl.recovery_time = when
        dbmap = "".join(
            f'{{"dbOid":"{oid}", "datname":"{name}"}}\n' for oid, name in self.conn.database_map()
        )
        if dbmap:
            ordered.append(self._add_file("database_map", dbmap.encode()))
        return ordered

    def _add_file(self, name: str, data: bytes) -> ContentEntry:
        """A file pg_probackup writes itself (backup_label, tablespace_map, database_map)."""
        write_file(self.database / name, data, mode=0o600, sync=self.opts.sync)
        return ContentEntry(name, len(data), LABEL_FILE_MODE, crc=crc32c(data))

    def _copy_files(
        self, regular: list[SourceFile], params: StreamParams, entries: dict[str, ContentEntry]
    ) -> None:
        assert self.backup_dir is not None
        hmap = HeaderMapWriter(self.backup_dir / "page_header_map")
        pending: set[Future[tuple[ContentEntry | None, bytes]]] = set()
        # Biggest first: the long files start early and the small ones fill the gaps.
        work = sorted(regular, key=lambda f: f.size, reverse=True)
        with ThreadPoolExecutor(max_workers=self.opts.threads) as pool:
            pending = {pool.submit(self._backup_one, f, params) for f in work}
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for fut in done:
                        entry, region = fut.result()
                        if entry is None:
                            continue
                        if region:
                            entry.hdr_off = hmap.append(region)
                        entries[entry.path] = entry
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
            finally:
                hmap.close(self.opts.sync)

    def _backup_one(self, f: SourceFile, params: StreamParams) -> tuple[ContentEntry | None, bytes]:
        dst = str(self.database / f.rel)
        parent = self.parent
        advance = self.reporter.advance
        if f.is_datafile:
            in_parent = parent is not None and parent.has(f.rel)
            r = backup_datafile(
                f.full, dst, segno=f.segno, listed_size=f.size, params=params,
                delta_lsn=parent.start_lsn if parent is not None and in_parent else None,
                sync=self.opts.sync, advance=advance,
            )
            if r.missing:
                return None, b""
            entry = ContentEntry(
                f.rel, 0, f.mode, is_datafile=True, db_oid=f.db_oid, segno=f.segno,
                n_blocks=r.n_blocks,
            )
            if r.n_headers:
                region, hdr_crc = pack_region(r.headers)
                entry.size = r.write_size
                entry.crc = r.crc
                entry.compress_alg = r.compress_alg
                entry.full_size = r.uncompressed_size
                entry.n_headers = r.n_headers
                entry.hdr_crc = hdr_crc
                entry.hdr_size = len(region)
                return entry, region
            if in_parent and r.n_blocks > 0:
                entry.size = -1
            return entry, b""
        prev = parent.prev_file(f.rel) if parent is not None else None
        nd = backup_nondata_file(
            f.full, dst, name=f.rel.rpartition("/")[2], size=f.size, mtime=f.mtime, prev=prev,
            parent_start_time=parent.start_time if parent is not None else 0,
            sync=self.opts.sync, advance=advance,
        )
        if nd.missing:
            return None, b""
        return (
            ContentEntry(f.rel, nd.write_size, f.mode, crc=nd.crc, db_oid=f.db_oid,
                         full_size=nd.full_size),
            b"",
        )

    def finish(self, ordered: list[ContentEntry]) -> None:
        assert self.ctl is not None and self.backup_dir is not None
        ctl = self.ctl
        text = "".join(e.to_line() for e in ordered).encode(errors="surrogateescape")
        write_file(self.backup_dir / "backup_content.control", text, sync=self.opts.sync)
        data = unc = wal = 0
        for e in ordered:
            if e.is_dir:
                data += 4096
                unc += 4096
            elif e.size > 0:
                if e.path.startswith("pg_wal/") and not e.path.endswith(".history"):
                    wal += e.size
                else:
                    data += e.size
                    unc += e.full_size or e.size
        if not ctl.stream:
            wal = archived_wal_bytes(ctl.start_lsn, ctl.stop_lsn, self.inst.xlog_seg_size)
        ctl.data_bytes, ctl.uncompressed_bytes, ctl.wal_bytes = data, unc, wal
        ctl.content_crc = crc32c(text)
        ctl.end_time = int(time.time())
        ctl.status = "OK"
        self.write_control()
        self.unlock()


def _human(n: int) -> str:
    """1536 -> '1.5kB' (binary units, as pg_probackup prints sizes)."""
    if n < 1024:
        return f"{n}B"
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1024
        if value < 1024 or unit == "TB":
            break
    return f"{value:.1f}{unit}"


def run_backup(
    store: Path, instance: str, opts: BackupOptions, reporter: Reporter | None = None
) -> BackupResult:
    """Take one backup; returns its id. Raises PbkfsError subclasses on failure."""
    opts.validate()
    reporter = reporter or Reporter(quiet=True)
    inst = load_instance(store, instance)
    t0 = time.monotonic()
    conn = PgConnection(opts.host, opts.port, opts.user, opts.dbname)
    run = _Run(inst, opts, conn, reporter)
    try:
        info, control = run.prepare()
        run.create(info, control)
        assert run.ctl is not None and run.backup_dir is not None
        reporter.info(
            f"backup start, instance: {instance}, backup ID: {run.ctl.backup_id}, backup mode:"
            f" {opts.mode}, wal mode: {'STREAM' if opts.stream else 'ARCHIVE'},"
            f" compress-algorithm: {opts.compress_alg},"
            f" compress-level: {opts.compress_level}"
        )
        if run.parent is not None:
            reporter.info(f"parent backup: {run.parent.backup_id}")
        try:
            ordered = run.body(control)
            run.finish(ordered)
        except BaseException as exc:
            reporter.stop()
            _mark_error(run)
            if _is_disk_full(exc):
                raise DiskFullError(getattr(exc, "filename", None) or run.backup_dir) from None
            if isinstance(exc, OSError) and not isinstance(exc, PbkfsError):
                raise CatalogError(
                    exc.filename or run.backup_dir, f"backup failed: {exc.strerror}"
                ) from None
            raise
    except BaseException as exc:
        if run.backup_dir is None and _is_disk_full(exc):
            raise DiskFullError(inst.backups_dir) from None
        raise
    finally:
        conn.close()
    seconds = time.monotonic() - t0
    assert run.ctl is not None and run.backup_dir is not None
    reporter.info(
        f"backup {run.ctl.backup_id} completed: {_human(run.ctl.data_bytes or 0)} data +"
        f" {_human(run.ctl.wal_bytes or 0)} WAL in {seconds:.1f}s"
    )
    return BackupResult(run.ctl.backup_id, run.backup_dir, run.ctl, len(ordered), seconds)


def _mark_error(run: _Run) -> None:
    """Rewrite backup.control with status ERROR; never mask the original failure."""
    if run.ctl is None or run.backup_dir is None:
        return
    run.ctl.status = "ERROR"
    run.ctl.end_time = int(time.time())
    try:
        run.write_control()
    except OSError as exc:
        run.reporter.warning(f"cannot mark backup {run.ctl.backup_id} as ERROR: {exc}")
    run.unlock()
