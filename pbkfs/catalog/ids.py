"""Backup ids: the backup's start time (Unix seconds) in upper-case base 36."""

from __future__ import annotations

_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def encode_id(start_time: int) -> str:
    """Base-36 id of a backup started at `start_time` (as pg_probackup names it)."""
    if start_time < 0:
        raise ValueError(f"negative backup start time {start_time}")
    if start_time == 0:
        return "0"
    out = []
    while start_time:
        start_time, digit = divmod(start_time, 36)
        out.append(_DIGITS[digit])
    return "".join(reversed(out))


def decode_id(backup_id: str) -> int:
    """Start time encoded by a backup id; ValueError when it is not base 36."""
    if not backup_id or not backup_id.isascii() or not backup_id.isalnum():
        raise ValueError(f"not a backup id: {backup_id!r}")
    return int(backup_id, 36)
