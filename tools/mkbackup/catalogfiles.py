"""The text files of a catalog, byte for byte as pg_probackup 2.5.16 prints them.

Three formats: `key = value` files (pg_probackup.conf, backup.control), the
one-line-per-file list backup_content.control (JSON-looking but printed with
sprintf: no escaping, fixed field order, some fields only when set), and the
timestamps inside them. Also the few reads the writer needs from a parent
backup (its control file and file list), kept minimal on purpose: the full
reader lives in pbkfs.catalog.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pbkfs.catalog.ids import encode_id
from pbkfs.catalog.lsn import format_lsn
from pbkfs.errors import ParseError
from pbkfs.fsutil import write_all

S_IFDIR = 0o040000
S_IFREG = 0o100000
BYTES_INVALID = -1


def format_time(when: int | float | datetime) -> str:
    """`2026-11-25 17:52:18+00`: UTC, whole seconds, as time2iso() writes it."""
    if isinstance(when, datetime):
        stamp = when.astimezone(UTC)
    else:
        stamp = datetime.fromtimestamp(int(when), UTC)
    return stamp.strftime("%Y-%m-%d %H:%M:%S") + "+00"


@dataclass
class ContentEntry:
    """One line of backup_content.control (pgFile in pg_probackup)."""

    path: str
    size: int  # write_size: bytes stored here; -1 = unchanged since the parent
    mode: int  # st_mode with type bits
    is_datafile: bool = False
    crc: int = 0
    compress_alg: str = "none"
    db_oid: int = 0
    full_size: int = 0  # uncompressed_size
    segno: int = 0
    n_blocks: int = 0
    n_headers: int = 0
    hdr_crc: int = 0
    hdr_off: int = 0
    hdr_size: int = 0

    @property
    def is_dir(self) -> bool:
        return self.mode & 0o170000 == S_IFDIR

    def to_line(self) -> str:
        """The line write_backup_filelist() prints, with its trailing newline."""
        line = (
            f'{{"path":"{self.path}", "size":"{self.size}", "mode":"{self.mode}", '
            f'"is_datafile":"{int(self.is_datafile)}", "is_cfs":"0", "crc":"{self.crc}", '
            f'"compress_alg":"{self.compress_alg}", "external_dir_num":"0", '
            f'"dbOid":"{self.db_oid}"'
        )
        if self.full_size != 0 and self.full_size != self.size:
            line += f',"full_size":"{self.full_size}"'
        if self.is_datafile:
            line += f',"segno":"{self.segno}"'
        if self.n_blocks > 0:
            line += f',"n_blocks":"{self.n_blocks}"'
        if self.n_headers > 0:
            line += (
                f',"n_headers":"{self.n_headers}","hdr_crc":"{self.hdr_crc}"'
                f',"hdr_off":"{self.hdr_off}","hdr_size":"{self.hdr_size}"'
            )
        return line + "}\n"


@dataclass
class BackupControl:
    """The fields of backup.control that this writer knows (pgBackup)."""

    backup_mode: str
    start_time: int
    compress_alg: str = "none"
    compress_level: int = 1
    stream: bool = True
    block_size: int = 8192
    xlog_block_size: int = 8192
    checksum_version: int = 0
    program_version: str = "2.5.16"
    server_version: str = "15"
    timeline: int = 0
    start_lsn: int = 0
    stop_lsn: int = 0
    end_time: int = 0
    recovery_xid: int = 0
    recovery_time: datetime | None = None
    data_bytes: int | None = None
    wal_bytes: int | None = None
    uncompressed_bytes: int | None = None
    pgdata_bytes: int | None = None
    status: str = "RUNNING"
    parent_backup_id: str | None = None
    primary_conninfo: str | None = None
    content_crc: int = 0

    @property
    def backup_id(self) -> str:
        return encode_id(self.start_time)

    def render(self) -> str:
        """Text of backup.control in pgBackupWriteControl()'s order."""
        out = [
            "#Configuration",
            f"backup-mode = {self.backup_mode}",
            f"stream = {'true' if self.stream else 'false'}",
            f"compress-alg = {self.compress_alg}",
            f"compress-level = {self.compress_level}",
            "from-replica = false",
            "",
            "#Compatibility",
            f"block-size = {self.block_size}",
            f"xlog-block-size = {self.xlog_block_size}",
            f"checksum-version = {self.checksum_version}",
            f"program-version = {self.program_version}",
            f"server-version = {self.server_version}",
            "",
            "#Result backup info",
            f"timelineid = {self.timeline}",
            f"start-lsn = {format_lsn(self.start_lsn)}",
            f"stop-lsn = {format_lsn(self.stop_lsn)}",
            f"start-time = '{format_time(self.start_time)}'",
        ]
        if self.end_time > 0:
            out.append(f"end-time = '{format_time(self.end_time)}'")
        out.append(f"recovery-xid = {self.recovery_xid}")
        if self.recovery_time is not None:
            out.append(f"recovery-time = '{format_time(self.recovery_time)}'")
        for key, value in (
            ("data-bytes", self.data_bytes),
            ("wal-bytes", self.wal_bytes),
            ("uncompressed-bytes", self.uncompressed_bytes),
            ("pgdata-bytes", self.pgdata_bytes),
        ):
            if value is not None:
                out.append(f"{key} = {value}")
        out.append(f"status = {self.status}")
        if self.parent_backup_id:
            out.append(f"parent-backup-id = '{self.parent_backup_id}'")
        if self.primary_conninfo:
            out.append(f"primary_conninfo = '{self.primary_conninfo}'")
        if self.content_crc:
            out.append(f"content-crc = {self.content_crc}")
        return "\n".join(out) + "\n"


def render_instance_conf(pgdata: str, system_identifier: int, xlog_seg_size: int) -> str:
    """pg_probackup.conf as add-instance writes it."""
    return (
        "# Backup instance information\n"
        f"pgdata = {pgdata}\n"
        f"system-identifier = {system_identifier}\n"
        f"xlog-seg-size = {xlog_seg_size}\n"
    )


def write_new(path: str | Path, raw: bytes, mode: int = 0o600, sync: bool = True) -> None:
    """Create (or truncate) `path` with content `raw`; fsynced when `sync`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        write_all(fd, raw)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes | str, mode: int = 0o600, sync: bool = True) -> None:
    """Write `path` atomically (temp file + rename), like pg_probackup's control files.

    On a full disk the rename dance needs new blocks that are not there; the file
    is then overwritten in place (its old blocks are reused), so a backup can
    still be marked ERROR when the disk filled up under it.
    """
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(path.name + ".tmp")
    try:
        write_new(tmp, raw, mode, sync)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno != errno.ENOSPC or not path.exists():
            raise
        tmp.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY)
        try:
            write_all(fd, raw)
            os.ftruncate(fd, len(raw))
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)


# -- reading back (parent backups, instance settings) -------------------------

_KV = re.compile(r"^\s*([A-Za-z0-9_\- ]+?)\s*=\s*(.*?)\s*$")
_PAIR = re.compile(r'"([^"]*)":"([^"]*)"')


def _norm_key(key: str) -> str:
    return re.sub(r"[-_ ]", "-", key.strip().lower())


def parse_key_values(path: Path) -> dict[str, str]:
    """key = value pairs of a pg_probackup.conf / backup.control (keys normalised to `a-b`)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ParseError(path, f"cannot read: {exc.strerror}") from None
    out: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _KV.match(stripped)
        if not m:
            raise ParseError(path, f"not a 'key = value' line: {line!r}", lineno)
        value = m.group(2)
        if value.startswith("'") and value.endswith("'") and len(value) >= 2:
            value = value[1:-1].replace("''", "'")
        else:
            value = value.split("#", 1)[0].strip()
        out[_norm_key(m.group(1))] = value
    return out


def parse_content_line(line: str) -> dict[str, str]:
    """The `"name":"value"` pairs of one backup_content.control line."""
    return dict(_PAIR.findall(line))
