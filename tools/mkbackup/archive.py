"""`archive-push`: PostgreSQL's archive_command, writing a pg_probackup 2.5 WAL archive.

    archive_command = 'python -m tools.mkbackup archive-push -B STORE --instance NAME
                       --wal-file-path=%p --wal-file-name=%f [--compress-algorithm=zlib]'

What lands in `wal/<instance>/` is what pg_probackup 2.5.16 writes there:

* WAL segments (24 hex digits) as `<name>.gz` with zlib, in the exact gzip
  framing zlib's gzwrite produces (mtime 0, OS "Unix", XFL from the level),
  so the bytes equal pg_probackup's; with `none` they are copied as they are;
* timeline `.history`, backup history `.backup` and `.partial` files always
  uncompressed;
* every file is written to `<dest>.part` (created with O_EXCL: a concurrent
  or crashed push is noticed), fsynced, then renamed over `<dest>`;
* an archived file with the same content is left alone ("skipped"); one
  with different content is an error unless `--overwrite`.

The server runs archive_command in its data directory; like pg_probackup,
the push refuses a data directory whose system identifier is not the
instance's, so a second cluster cannot mix its WAL into the archive.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pbkfs.catalog.pgcontrol import read_pg_control
from pbkfs.errors import CatalogError, PbkfsError, UsageError
from pbkfs.fsutil import fsync_dir, write_all
from tools.mkbackup.instance import DIR_MODE, load_instance

WAL_ALGORITHMS = ("none", "zlib")
DEFAULT_ARCHIVE_TIMEOUT = 300  # pg_probackup's ARCHIVE_TIMEOUT_DEFAULT, seconds
CHUNK = 1 << 20
FILE_MODE = 0o600
_SEGMENT_NAME = re.compile(r"[0-9A-F]{24}")
_ARCHIVABLE = re.compile(
    r"[0-9A-F]{24}(\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history"
)


def is_segment_name(name: str) -> bool:
    """pg_probackup's IsXLogFileName: only full segments are ever compressed."""
    return _SEGMENT_NAME.fullmatch(name) is not None


def gzip_header(level: int) -> bytes:
    """The 10-byte header zlib's gzopen/gzwrite writes (no name, mtime 0, OS 3 = Unix)."""
    xfl = 2 if level == 9 else 4 if level < 2 else 0
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + bytes([xfl, 3])


class GzipWriter:
    """Streaming gzip in zlib's own framing: the same bytes pg_probackup's gzwrite gives."""

    def __init__(self, level: int) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 8)
        self._crc = 0
        self._size = 0
        self._started = False
        self._level = level

    def feed(self, data: bytes) -> bytes:
        out = b"" if self._started else gzip_header(self._level)
        self._started = True
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        return out + self._z.compress(data)

    def finish(self) -> bytes:
        out = b"" if self._started else gzip_header(self._level)
        self._started = True
        return out + self._z.flush() + struct.pack("<II", self._crc, self._size & 0xFFFFFFFF)


@dataclass(frozen=True)
class PushOptions:
    compress_alg: str = "none"
    compress_level: int = 1
    overwrite: bool = False
    sync: bool = True
    archive_timeout: int = DEFAULT_ARCHIVE_TIMEOUT  # seconds to wait on another push's .part

    def validate(self) -> None:
        if self.compress_alg == "pglz":
            raise UsageError("--compress-algorithm: cannot use pglz for WAL compression")
        if self.compress_alg not in WAL_ALGORITHMS:
            raise UsageError(f"--compress-algorithm: {self.compress_alg!r} is not one of "
                             f"{', '.join(WAL_ALGORITHMS)}")
        if not 0 <= self.compress_level <= 9:
            raise UsageError(f"--compress-level: {self.compress_level} is not in 0..9")
        if self.archive_timeout < 0:
            raise UsageError(f"--archive-timeout: {self.archive_timeout} is negative")


@dataclass(frozen=True)
class PushResult:
    name: str  # the file PostgreSQL asked to archive
    dest: Path  # where it is in the archive
    pushed: bool  # False: an identical copy was already there (skipped)
    compressed: bool


def archive_dir(store: Path, instance: str) -> Path:
    """`<store>/wal/<instance>`: where archive-push writes and ARCHIVE backups look."""
    return store / "wal" / instance


def _read_stored(path: Path, compressed: bool) -> bytes | None:
    """Content of an archived copy (decompressed); None when it cannot be decoded."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CatalogError(path, f"cannot read the archived copy: {exc.strerror}") from None
    if not compressed:
        return raw
    try:
        return zlib.decompress(raw, 16 + zlib.MAX_WBITS)
    except zlib.error:
        return None


def _same_file(source: Path, stored: Path, compressed: bool) -> bool:
    """pg_probackup compares CRCs of the source and the (decompressed) archived copy."""
    try:
        src = source.read_bytes()
    except OSError as exc:
        raise CatalogError(source, f"cannot read source WAL file: {exc.strerror}") from None
    return _read_stored(stored, compressed) == src


def _grab_part(part: Path, timeout: int, log: Callable[[str], None]) -> int:
    """Create `part` exclusively (the push's lock); wait out a concurrent push, reuse a stale
    one. pg_probackup's rule: within `timeout` seconds the file must vanish (then it is
    taken) or stop growing (then it is stale: removed and taken)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        return os.open(part, flags, FILE_MODE)
    except FileExistsError:
        pass
    except OSError as exc:
        raise CatalogError(part, f"cannot create temp WAL file: {exc.strerror}") from None
    log(f"temp WAL file already exists, waiting on it {timeout} seconds: {part}")
    first_size: int | None = None
    stale = True
    for _ in range(timeout):
        try:
            size = part.stat().st_size
        except FileNotFoundError:
            try:
                return os.open(part, flags, FILE_MODE)
            except FileExistsError:
                continue
        else:
            if first_size is None:
                first_size = size
            elif size > first_size:
                stale = False
        time.sleep(1)
    if not stale:
        raise CatalogError(part, f"another push is still writing this temp WAL file after "
                                 f"{timeout} seconds")
    log(f"reusing stale temp WAL file {part}")
    part.unlink(missing_ok=True)
    try:
        return os.open(part, flags, FILE_MODE)
    except OSError as exc:
        raise CatalogError(part, f"cannot create temp WAL file: {exc.strerror}") from None


def _copy_into(fd: int, source: Path, gz: GzipWriter | None) -> None:
    try:
        src = open(source, "rb")  # noqa: SIM115 - closed below, errors mapped to CatalogError
    except OSError as exc:
        raise CatalogError(source, f"cannot open source WAL file: {exc.strerror}") from None
    with src:
        while True:
            try:
                chunk = src.read(CHUNK)
            except OSError as exc:
                raise CatalogError(source, f"cannot read source WAL file: {exc.strerror}") \
                    from None
            if not chunk:
                break
            write_all(fd, gz.feed(chunk) if gz is not None else chunk)
    if gz is not None:
        write_all(fd, gz.finish())


def push_file(source: Path, name: str, dest_dir: Path, opts: PushOptions,
              log: Callable[[str], None] = lambda _m: None) -> PushResult:
    """Put `source` into `dest_dir` as `name` (+ `.gz`) the way pg_probackup does."""
    compressed = opts.compress_alg == "zlib" and is_segment_name(name)
    dest = dest_dir / (name + ".gz" if compressed else name)
    part = dest.with_name(dest.name + ".part")
    if not source.is_file():
        raise CatalogError(source, "cannot open source WAL file: no such file")
    fd = _grab_part(part, opts.archive_timeout, log)
    done = False
    try:
        if dest.exists():
            if _same_file(source, dest, compressed):
                log(f"WAL file already exists in archive with the same checksum, skip pushing: "
                    f"{source}")
                return PushResult(name, dest, pushed=False, compressed=compressed)
            if not opts.overwrite:
                raise CatalogError(dest, "WAL file already exists in archive with different "
                                         "checksum (use --overwrite to replace it)")
            log(f"WAL file already exists in archive with different checksum, overwriting: "
                f"{dest}")
        _copy_into(fd, source, GzipWriter(opts.compress_level) if compressed else None)
        if opts.sync:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(part, dest)
        done = True
        if opts.sync:
            with contextlib.suppress(OSError):
                fsync_dir(dest_dir)
        return PushResult(name, dest, pushed=True, compressed=compressed)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CatalogError(part, "no space left on device; WAL file not archived") \
                from None
        raise CatalogError(exc.filename or part, f"cannot write temp WAL file: "
                                                 f"{exc.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)
        if not done:
            part.unlink(missing_ok=True)


def archive_push(
    store: Path,
    instance: str,
    wal_file_name: str,
    wal_file_path: str | None = None,
    opts: PushOptions | None = None,
    *,
    cwd: Path | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> PushResult:
    """The whole archive-push command: checks, then push_file.

    `cwd` is the server's data directory (archive_command runs there); `%p`
    is relative to it. PbkfsError subclasses on any failure, nothing left behind.
    """
    opts = opts or PushOptions()
    opts.validate()
    if not _ARCHIVABLE.fullmatch(wal_file_name):
        raise UsageError(f"--wal-file-name: {wal_file_name!r} is not a WAL segment, partial "
                         "segment, timeline history or backup history file name")
    inst = load_instance(store, instance)
    pgdata = Path(cwd) if cwd is not None else Path.cwd()
    try:
        control = read_pg_control(pgdata)
    except PbkfsError as exc:
        raise CatalogError(pgdata, "archive-push runs in the server's data directory (as "
                                   f"archive_command does); cannot read its pg_control: {exc}") \
            from None
    if control.system_identifier != inst.system_identifier:
        raise CatalogError(pgdata, f"refuse to push WAL file {wal_file_name} into the archive: "
                                   f"instance {instance!r} has system identifier "
                                   f"{inst.system_identifier}, this data directory "
                                   f"{control.system_identifier}")
    source = pgdata / (wal_file_path if wal_file_path else f"pg_wal/{wal_file_name}")
    dest_dir = archive_dir(store, instance)
    try:
        dest_dir.mkdir(mode=DIR_MODE, parents=False, exist_ok=True)
    except OSError as exc:
        raise CatalogError(dest_dir, f"cannot create the WAL archive directory: "
                                     f"{exc.strerror}") from None
    return push_file(source, wal_file_name, dest_dir, opts, log)
