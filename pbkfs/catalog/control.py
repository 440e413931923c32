"""backup.control and pg_probackup.conf as typed records (format spec §1.3, §1.6)."""

from __future__ import annotations

from datetime import datetime

import msgspec

from pbkfs.catalog.keyvalue import read_keyvalue
from pbkfs.catalog.lsn import parse_lsn
from pbkfs.errors import ParseError
from pbkfs.storage.location import Location

BACKUP_MODES = ("FULL", "PAGE", "PTRACK", "DELTA")
STATUSES = (
    "OK", "DONE", "RUNNING", "ERROR", "MERGING", "MERGED", "DELETING", "DELETED",
    "ORPHAN", "CORRUPT", "UNKNOWN",
)
USABLE_STATUSES = ("OK", "DONE")
COMPRESS_ALGS = ("none", "zlib", "pglz", "lz4", "zstd")


class BackupControl(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of backup.control a reader needs, typed; `raw` keeps every key as read."""

    backup_mode: str
    status: str
    stream: bool
    compress_alg: str
    compress_level: int
    from_replica: bool
    block_size: int
    xlog_block_size: int
    checksum_version: int
    program_version: str
    server_version: str
    timeline: int
    start_lsn: int
    stop_lsn: int
    start_time: str
    end_time: str | None
    recovery_time: str | None
    recovery_xid: int | None
    parent_backup_id: str | None
    content_crc: int
    raw: dict[str, str]


class InstanceConfig(msgspec.Struct, frozen=True, kw_only=True):
    """pg_probackup.conf of an instance: only `xlog-seg-size` matters to a reader."""

    pgdata: str | None
    system_identifier: int | None
    xlog_seg_size: int
    raw: dict[str, str]


def version_number(version: str) -> int:
    """`2.5.16` -> 20516, the comparison key pg_probackup uses."""
    parts = version.strip().split(".")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a version: {version!r}")
    nums = [int(p) for p in parts] + [0] * (3 - len(parts))
    return nums[0] * 10000 + nums[1] * 100 + nums[2]


def parse_time(text: str) -> datetime:
    """pg_probackup times: `2024-05-01 10:00:00+00`, other offsets `+hh[:mm]` allowed."""
    t = text.strip()
    if len(t) >= 3 and t[-3] in "+-" and t[-2:].isdigit():
        t += ":00"
    return datetime.fromisoformat(t)


def _bool(value: str, key: str, path: Location) -> bool:
    v = value.strip().lower()
    if v in ("true", "on", "yes", "1"):
        return True
    if v in ("false", "off", "no", "0"):
        return False
    raise ParseError(path, f"{key}: not a boolean: {value!r}")


def _int(values: dict[str, str], key: str, path: Location, default: int | None = None) -> int:
    if key not in values:
        if default is None:
            raise ParseError(path, f"missing required field {key}")
        return default
    try:
        return int(values[key])
    except ValueError:
        raise ParseError(path, f"{key}: not an integer: {values[key]!r}") from None


def parse_backup_control(path: Location) -> BackupControl:
    """Read and validate one backup.control; every problem names the file and the field."""
    v = read_keyvalue(path)

    def need(key: str) -> str:
        if key not in v:
            raise ParseError(path, f"missing required field {key}")
        return v[key]

    mode = need("backup-mode").upper()
    if mode not in BACKUP_MODES:
        raise ParseError(path, f"backup-mode: unknown mode {v['backup-mode']!r}")
    status = v.get("status", "UNKNOWN").upper()
    if status not in STATUSES:
        raise ParseError(path, f"status: unknown status {v['status']!r}")
    alg = v.get("compress-alg", "none").lower()
    if alg not in COMPRESS_ALGS:
        raise ParseError(path, f"compress-alg: unknown algorithm {v['compress-alg']!r}")
    try:
        start_lsn = parse_lsn(v.get("start-lsn", "0/0"))
        stop_lsn = parse_lsn(v.get("stop-lsn", "0/0"))
    except ValueError as exc:
        raise ParseError(path, f"start-lsn/stop-lsn: {exc}") from None
    program_version = need("program-version")
    try:
        version_number(program_version)
    except ValueError:
        raise ParseError(path, f"program-version: {program_version!r} is not a version") from None
    start_time = need("start-time")
    try:
        parse_time(start_time)
    except ValueError:
        raise ParseError(path, f"start-time: not a time: {start_time!r}") from None
    recovery_xid = _int(v, "recovery-xid", path) if "recovery-xid" in v else None
    block_size = _int(v, "block-size", path, 8192)
    if block_size not in (1024, 2048, 4096, 8192, 16384, 32768):
        raise ParseError(path, f"block-size: unsupported value {block_size}")
    parent = v.get("parent-backup-id") or None
    if mode == "FULL" and parent:
        raise ParseError(path, f"FULL backup names a parent ({parent})")
    if mode != "FULL" and not parent:
        raise ParseError(path, f"{mode} backup has no parent-backup-id")
    return BackupControl(
        backup_mode=mode,
        status=status,
        stream=_bool(v.get("stream", "false"), "stream", path),
        compress_alg=alg,
        compress_level=_int(v, "compress-level", path, 1),
        from_replica=_bool(v.get("from-replica", "false"), "from-replica", path),
        block_size=block_size,
        xlog_block_size=_int(v, "xlog-block-size", path, 8192),
        checksum_version=_int(v, "checksum-version", path, 0),
        program_version=program_version,
        server_version=v.get("server-version", ""),
        timeline=_int(v, "timelineid", path, 1),
        start_lsn=start_lsn,
        stop_lsn=stop_lsn,
        start_time=start_time,
        end_time=v.get("end-time"),
        recovery_time=v.get("recovery-time"),
        recovery_xid=recovery_xid,
        parent_backup_id=parent.upper() if parent else None,
        content_crc=_int(v, "content-crc", path, 0),
        raw=v,
    )


def parse_instance_config(path: Location) -> InstanceConfig:
    """Read pg_probackup.conf of an instance."""
    v = read_keyvalue(path)
    sysid = _int(v, "system-identifier", path) if "system-identifier" in v else None
    seg = _int(v, "xlog-seg-size", path, 16 * 1024 * 1024)
    if seg <= 0 or seg & (seg - 1):
        raise ParseError(path, f"xlog-seg-size: not a power of two: {seg}")
    return InstanceConfig(pgdata=v.get("pgdata"), system_identifier=sysid, xlog_seg_size=seg, raw=v)
