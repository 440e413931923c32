"""Transaction times found in archived WAL, for checking time targets before recovery starts.

PostgreSQL stops a time-targeted recovery before the first transaction-end
record whose time is past the target (at or past it when not inclusive). So
a target is reachable from a backup only if no such record lies between the
backup's start and stop (else: "requested recovery stop point is before
consistent recovery point"), and it is inside the archive only if such a
record exists somewhere after (else: "recovery ended before configured
recovery target was reached").
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pbkfs.walarchive.archive import WalArchive
from pbkfs.walarchive.names import segment_name
from pbkfs.walarchive.records import iter_records, xact_time

TAIL_SEGMENTS = 16  # how far back from the archive's end to look for the last transaction


def _segment(archive: WalArchive, tli: int, segno: int) -> bytes:
    data, _ = archive.fetch(segment_name(tli, segno, archive.seg_size))
    return data


def xact_times_between(archive: WalArchive, tli: int, start_lsn: int,
                       end_lsn: int) -> list[datetime]:
    """Times of the transaction-end records starting in [start_lsn, end_lsn) on `tli`.

    Raises WalNotFound/CorruptionError when a segment of the range cannot be read.
    """
    seg = archive.seg_size
    segments = [(s, _segment(archive, tli, s)) for s in range(start_lsn // seg,
                                                                end_lsn // seg + 1)]
    out = []
    for rec in iter_records(segments, seg, archive.xlog_blcksz):
        if rec.lsn >= end_lsn:
            break
        when = xact_time(rec) if rec.lsn >= start_lsn else None
        if when is not None:
            out.append(when)
    return out


def last_xact_time(archive: WalArchive, route: Sequence[tuple[int, int]],
                   max_segments: int = TAIL_SEGMENTS) -> tuple[datetime, str] | None:
    """Latest transaction-end time in the last segments of `route` ((tli, segno) in replay
    order) and the segment holding it; None when none of the last `max_segments` has one."""
    for i in range(len(route) - 1, max(-1, len(route) - 1 - max_segments), -1):
        tli, segno = route[i]
        segments = [(segno, _segment(archive, tli, segno))]
        if i + 1 < len(route) and route[i + 1][0] == tli:
            segments.append((route[i + 1][1], _segment(archive, tli, route[i + 1][1])))
        seg_end = (segno + 1) * archive.seg_size
        times = [t for rec in iter_records(segments, archive.seg_size, archive.xlog_blcksz)
                 if rec.lsn < seg_end and (t := xact_time(rec)) is not None]
        if times:
            return max(times), segment_name(tli, segno, archive.seg_size)
    return None
