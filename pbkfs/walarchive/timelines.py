"""Per-timeline view of an archive: segment ranges, gaps, and the backups each one serves.

Mirrors what `pg_probackup show --archive` computes (catalog_get_timelines in
pg_probackup 2.5): every full segment file counts (a plain and a `.gz` copy
of one segment count twice, as there), gaps are holes between the first and
the last segment of a timeline, a timeline's parent and switchpoint come from
its history file, and the "closest backup" of a child timeline is the valid
backup of an ancestor timeline that stopped nearest before the switchpoint.
On top of that, `coverage` says for one backup which segments it needs, which
of them are missing, and how far the archive lets it recover.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pbkfs.catalog.control import USABLE_STATUSES
from pbkfs.catalog.store import Backup, Instance
from pbkfs.errors import PbkfsError
from pbkfs.walarchive.archive import WalArchive
from pbkfs.walarchive.history import HistoryEntry
from pbkfs.walarchive.names import HISTORY, PARTIAL, SEGMENT, segment_name

log = logging.getLogger(__name__)

SIZE_OF_SHORT_PAGE_HEADER = 24


@dataclass(frozen=True)
class SegmentRange:
    """Segments `begin` .. `end` (inclusive) of one timeline."""

    tli: int
    begin: int
    end: int

    def names(self, seg_size: int) -> tuple[str, str]:
        return segment_name(self.tli, self.begin, seg_size), segment_name(self.tli, self.end,
                                                                           seg_size)


@dataclass
class Timeline:
    """What the archive holds for one timeline."""

    tli: int
    parent_tli: int = 0
    switchpoint: int = 0
    history: list[HistoryEntry] | None = None  # None: no (readable) history file
    n_segments: int = 0
    size: int = 0
    begin_segno: int = 0
    end_segno: int = 0
    segnos: list[int] = field(default_factory=list)  # distinct full segments, ascending
    partial_segnos: list[int] = field(default_factory=list)
    lost: list[SegmentRange] = field(default_factory=list)
    backups: list[Backup] = field(default_factory=list)  # on this timeline, newest first
    closest_backup: Backup | None = None
    parent: Timeline | None = None

    @property
    def status(self) -> str:
        return "DEGRADED" if self.lost else "OK"


def archive_timelines(archive: WalArchive, instance: Instance) -> list[Timeline]:
    """Every timeline with a file in the archive, ascending, linked to its parent."""
    by_tli: dict[int, Timeline] = {}
    for f in archive.files:  # sorted by name: per timeline, history file first
        wal = f.wal
        if wal.kind == HISTORY:
            tl = by_tli.setdefault(wal.tli, Timeline(wal.tli))
            try:
                tl.history = archive.history(wal.tli)
            except PbkfsError as exc:
                log.warning("ignoring timeline history file %s: %s", f.path, exc)
                continue
            if tl.history:
                tl.parent_tli = tl.history[-1].tli
                tl.switchpoint = tl.history[-1].switchpoint
                tl.parent = by_tli.get(tl.parent_tli)
            continue
        if wal.tli == 0:  # temp or unknown files
            continue
        tl = by_tli.setdefault(wal.tli, Timeline(wal.tli))
        if wal.kind == PARTIAL:
            tl.partial_segnos.append(wal.segno)
            continue
        if wal.kind != SEGMENT:
            continue
        if tl.n_segments:
            expected = tl.end_segno + 1
            if wal.segno != expected and wal.segno != tl.end_segno:
                tl.lost.append(SegmentRange(tl.tli, expected, wal.segno - 1))
        else:
            tl.begin_segno = wal.segno
        if not tl.segnos or tl.segnos[-1] != wal.segno:
            tl.segnos.append(wal.segno)
        tl.end_segno = wal.segno
        tl.n_segments += 1
        tl.size += f.size
    timelines = [by_tli[t] for t in sorted(by_tli)]
    backups = [b for b in instance.newest_first() if b.readable]
    for tl in timelines:
        tl.backups = [b for b in backups if b.control.timeline == tl.tli]
    for tl in timelines:
        tl.closest_backup = _closest_backup(tl)
    return timelines


def _closest_backup(tl: Timeline) -> Backup | None:
    """The valid ancestor-timeline backup that stopped nearest before `tl`'s switchpoint."""
    if not tl.switchpoint:
        return None
    current: Timeline | None = tl
    seen: set[int] = set()
    while current is not None and current.parent is not None and current.tli not in seen:
        seen.add(current.tli)
        best: Backup | None = None
        for backup in current.parent.backups:
            c = backup.control
            if (c.stop_lsn and c.stop_lsn % 8192 >= SIZE_OF_SHORT_PAGE_HEADER
                    and c.stop_lsn <= current.switchpoint and c.status in USABLE_STATUSES
                    and (best is None or c.stop_lsn > best.control.stop_lsn)):
                best = backup
        if best is not None:
            return best
        current = current.parent
    return None


# -- what one backup needs ----------------------------------------------------------------


def segno_of(lsn: int, seg_size: int) -> int:
    return lsn // seg_size


def backup_segments(backup: Backup, seg_size: int) -> SegmentRange:
    """The segments from the one holding start-lsn to the one holding stop-lsn.

    A backup taken on a standby may stop at a record continuing into the next
    segment (pg_probackup keeps one more segment for those).
    """
    c = backup.control
    end = segno_of(c.stop_lsn, seg_size)
    if c.from_replica:
        end += 1
    return SegmentRange(c.timeline, segno_of(c.start_lsn, seg_size), end)


def missing_in(archive: WalArchive, rng: SegmentRange) -> list[str]:
    """Names of the segments of `rng` the archive has no copy of (full or partial)."""
    return [segment_name(rng.tli, s, archive.seg_size) for s in range(rng.begin, rng.end + 1)
            if not archive.has_segment(rng.tli, s)]


def contiguous_end(archive: WalArchive, tli: int, segno: int) -> int | None:
    """Last segment of the unbroken run of `tli` segments from `segno` (None if absent)."""
    if not archive.has_segment(tli, segno):
        return None
    while archive.has_segment(tli, segno + 1):
        segno += 1
    return segno


@dataclass(frozen=True)
class Coverage:
    """How the archive serves one backup on its own timeline."""

    backup_id: str
    needed: SegmentRange  # start .. stop segments (ARCHIVE backups need them from the archive)
    missing: list[str]  # of `needed`, absent from the archive (always [] for STREAM backups)
    reachable_end: int | None  # last segment replayable without a gap, None if none at all

    @property
    def consistent(self) -> bool:
        return not self.missing


def coverage(archive: WalArchive, backup: Backup) -> Coverage:
    """Which segments `backup` needs, which are missing, and how far recovery can go."""
    c = backup.control
    needed = backup_segments(backup, archive.seg_size)
    missing = [] if c.stream else missing_in(archive, needed)
    end = contiguous_end(archive, c.timeline, needed.begin)
    if c.stream:
        # WAL up to the stop is inside the backup; replay goes on with the archive's
        # segments after the stop segment, as far as they are unbroken.
        after = contiguous_end(archive, c.timeline, needed.end + 1)
        end = max(end if end is not None else needed.end,
                  after if after is not None else needed.end)
    return Coverage(backup.id, needed, missing, end)
