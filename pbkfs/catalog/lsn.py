"""WAL positions as pg_probackup writes them: `%X/%X` (high and low 32-bit halves)."""

from __future__ import annotations


def parse_lsn(text: str) -> int:
    """`0/1A00028` -> 0x1A00028; ValueError when malformed."""
    hi, sep, lo = text.strip().partition("/")
    if not sep or not hi or not lo:
        raise ValueError(f"not an LSN: {text!r}")
    h, low = int(hi, 16), int(lo, 16)
    if not (0 <= h <= 0xFFFFFFFF and 0 <= low <= 0xFFFFFFFF):
        raise ValueError(f"LSN out of range: {text!r}")
    return (h << 32) | low


def format_lsn(lsn: int) -> str:
    """0x1A00028 -> `0/1A00028`."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def wal_segment_name(timeline: int, lsn: int, segment_size: int) -> str:
    """Name of the WAL segment file holding `lsn` on `timeline`."""
    segno = lsn // segment_size
    per_xlogid = 0x100000000 // segment_size
    return f"{timeline:08X}{segno // per_xlogid:08X}{segno % per_xlogid:08X}"
