"""Names of the files in a WAL archive `wal/<instance>/` (format spec §1).

pg_probackup's archive-push writes, next to each other: segments
(`<24 hex>`, `.gz` when compressed; `.lz4`/`.zst` by later releases),
`.partial` segments of a timeline's last, unfinished segment, timeline
history files (`<8 hex>.history`), backup history files
(`<segment>.<8 hex offset>.backup`) and temp files of a push in progress
(`*.part`). Classifying a name is pure string work so that listing a large
archive never opens a file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SEGMENT = "segment"
PARTIAL = "partial"
HISTORY = "history"
BACKUP_HISTORY = "backup-history"
TEMP = "temp"
UNKNOWN = "unknown"

# Suffix -> codec. lz4/zst names come from pg_probackup 2.8's tests; no real archive checked.
COMPRESSIONS = {"": "none", ".gz": "gzip", ".lz4": "lz4", ".zst": "zstd"}

_HEX24 = r"[0-9A-F]{24}"
_COMP = r"(\.gz|\.lz4|\.zst)?"
_SEGMENT_RE = re.compile(rf"({_HEX24}){_COMP}")
_PARTIAL_RE = re.compile(rf"({_HEX24})\.partial{_COMP}")
_HISTORY_RE = re.compile(rf"([0-9A-F]{{8}})\.history{_COMP}")
_BACKUP_RE = re.compile(rf"({_HEX24})\.([0-9A-F]{{8}})\.backup")


@dataclass(frozen=True)
class WalName:
    """What a file name in the archive stands for."""

    name: str  # the file name as stored
    kind: str  # SEGMENT, PARTIAL, HISTORY, BACKUP_HISTORY, TEMP or UNKNOWN
    tli: int = 0
    segno: int = -1  # segment number (segments, partials, backup history files)
    compression: str = "none"
    base: str = ""  # the name PostgreSQL asks for: segment/history name without suffixes


def segments_per_xlogid(seg_size: int) -> int:
    return 0x100000000 // seg_size


def segment_name(tli: int, segno: int, seg_size: int) -> str:
    """`%08X%08X%08X` of timeline, high and low part of the segment number."""
    per = segments_per_xlogid(seg_size)
    return f"{tli:08X}{segno // per:08X}{segno % per:08X}"


def parse_segment_name(name: str, seg_size: int) -> tuple[int, int]:
    """(timeline, segment number) of a 24-hex segment name; ValueError when it is not one."""
    if not re.fullmatch(_HEX24, name):
        raise ValueError(f"not a WAL segment name: {name!r}")
    tli, log, seg = int(name[:8], 16), int(name[8:16], 16), int(name[16:], 16)
    if tli == 0:
        raise ValueError(f"WAL segment name with timeline 0: {name!r}")
    per = segments_per_xlogid(seg_size)
    if seg >= per:
        raise ValueError(f"segment part {seg:08X} of {name!r} is out of range for "
                         f"{seg_size}-byte segments")
    return tli, log * per + seg


def history_name(tli: int) -> str:
    return f"{tli:08X}.history"


def classify(name: str, seg_size: int) -> WalName:
    """Classify one directory entry of a WAL archive by its name."""
    if name.endswith(".part"):
        return WalName(name, TEMP)
    m = _SEGMENT_RE.fullmatch(name)
    kind = SEGMENT
    if m is None:
        m = _PARTIAL_RE.fullmatch(name)
        kind = PARTIAL
    if m is not None:
        try:
            tli, segno = parse_segment_name(m.group(1), seg_size)
        except ValueError:
            return WalName(name, UNKNOWN)
        return WalName(name, kind, tli, segno, COMPRESSIONS[m.group(2) or ""], m.group(1))
    m = _HISTORY_RE.fullmatch(name)
    if m is not None:
        tli = int(m.group(1), 16)
        if tli == 0:
            return WalName(name, UNKNOWN)
        return WalName(name, HISTORY, tli, -1, COMPRESSIONS[m.group(2) or ""],
                       f"{m.group(1)}.history")
    m = _BACKUP_RE.fullmatch(name)
    if m is not None:
        try:
            tli, segno = parse_segment_name(m.group(1), seg_size)
        except ValueError:
            return WalName(name, UNKNOWN)
        return WalName(name, BACKUP_HISTORY, tli, segno, "none", name)
    return WalName(name, UNKNOWN)


def requested_kind(name: str, seg_size: int) -> WalName:
    """What PostgreSQL asks for with `%f`: a segment, a history file, a partial or backup file.

    Only bare names are accepted (no directory part, no compression suffix):
    restore_command passes exactly the names PostgreSQL knows.
    """
    if "/" in name or name in ("", ".", ".."):
        return WalName(name, UNKNOWN)
    parsed = classify(name, seg_size)
    if parsed.compression != "none" or parsed.kind in (TEMP, UNKNOWN):
        return WalName(name, UNKNOWN)
    return parsed
