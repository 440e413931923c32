"""Choosing the backup and the WAL for a recovery target, and checking the archive has it.

pg_probackup restore's rule, kept here: with `--instance` alone, take the
newest valid backup whose consistent point is not after the target
(recovery-time for a time target, recovery-xid for an xid, stop-lsn for an
LSN; any backup for immediate, latest and name targets). A backup records its
recovery time to the second only; a time inside that second cannot be proven
to lie after the consistent point, so an older backup is preferred then and
the newest one is used only when nothing older exists (with a note).

ARCHIVE-mode backups hold no WAL: without a target they recover to their own
consistent point and promote (`immediate` + `promote`), which shows the
backup itself. STREAM backups without a target need no recovery settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pbkfs.catalog.chain import resolve_chain
from pbkfs.catalog.control import USABLE_STATUSES, parse_time
from pbkfs.catalog.lsn import format_lsn
from pbkfs.catalog.store import Backup, Instance
from pbkfs.errors import CatalogError, CorruptionError, PbkfsError, UsageError
from pbkfs.recovery.target import RecoveryTarget
from pbkfs.walarchive.archive import WalArchive
from pbkfs.walarchive.history import timeline_path
from pbkfs.walarchive.names import segment_name
from pbkfs.walarchive.scan import last_xact_time, xact_times_between
from pbkfs.walarchive.timelines import SegmentRange, backup_segments, missing_in

YES, SAME_SECOND, NO = "yes", "same-second", "no"


@dataclass(frozen=True)
class RoutePiece:
    """Segments `first` .. `last` (None: open end) are read from timeline `tli`."""

    tli: int
    first: int
    last: int | None


@dataclass(frozen=True)
class RecoveryPlan:
    """What a mount (or restore) of `backup` with `target` will replay."""

    backup: Backup
    chain: tuple[str, ...]  # backup ids, the target first, its FULL last
    requested: RecoveryTarget  # as given
    target: RecoveryTarget  # with the defaults applied
    recovery: bool  # write recovery.signal and recovery settings
    timeline: int  # the timeline recovery ends on
    needed: SegmentRange  # the backup's own start..stop segments
    missing: tuple[str, ...]  # of `needed`, absent from the archive (ARCHIVE backups only)
    wal_first: str  # first segment replayed
    wal_last: str | None  # last segment the target needs, None when only PostgreSQL can tell
    archive_end: str | None  # last segment replayable without a gap along the route
    notes: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        """Lines for the user: which backup, which target, which WAL range."""
        c = self.backup.control
        mode = "STREAM" if c.stream else "ARCHIVE"
        lines = [f"backup {self.backup.id} ({c.backup_mode}, {mode}, timeline {c.timeline}, "
                 f"consistent at {format_lsn(c.stop_lsn)}, {c.recovery_time or 'no time'}), "
                 f"chain {' <- '.join(reversed(self.chain))}"]
        if not self.recovery:
            lines.append("no recovery target: PostgreSQL replays the WAL inside the backup "
                         "and opens")
        else:
            lines.append(self.target.describe())
            span = self.wal_first + (f" .. {self.wal_last}" if self.wal_last else " ..")
            lines.append(f"WAL {span} from the archive (unbroken up to "
                         f"{self.archive_end or 'nothing'})")
        if self.missing:
            lines.append("MISSING from the archive: " + ", ".join(self.missing))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def require_wal(self) -> None:
        """CatalogError listing the missing segments unless the backup's own WAL is complete."""
        if self.missing:
            archive_dir = self.backup.instance.wal_dir
            raise CatalogError(archive_dir, f"backup {self.backup.id} cannot become consistent: "
                               f"{len(self.missing)} WAL segment(s) from its start to its stop "
                               f"are missing from the archive: {', '.join(self.missing)}")


def consistent_before(backup: Backup, target: RecoveryTarget) -> tuple[str, str]:
    """Is `backup`'s consistent point not after `target`? (YES, SAME_SECOND or NO, and why)."""
    c = backup.control
    kind = target.kind
    if kind == "time":
        assert target.time is not None
        if not c.recovery_time:
            return SAME_SECOND, f"backup {backup.id} records no recovery time"
        rt = parse_time(c.recovery_time)
        if rt + timedelta(seconds=1) <= target.time:
            return YES, ""
        if rt <= target.time:
            return SAME_SECOND, (f"the target lies in the second backup {backup.id} became "
                                 f"consistent ({c.recovery_time}); PostgreSQL refuses it if it "
                                 "is before that point")
        return NO, f"backup {backup.id} is consistent only at {c.recovery_time}"
    if kind == "xid":
        assert target.xid is not None
        if c.recovery_xid is None:
            return SAME_SECOND, f"backup {backup.id} records no recovery xid"
        if c.recovery_xid <= target.xid:
            return YES, ""
        return NO, f"backup {backup.id} is consistent only after xid {c.recovery_xid - 1}"
    if kind == "lsn":
        assert target.lsn is not None
        if c.stop_lsn <= target.lsn:
            return YES, ""
        return NO, f"backup {backup.id} is consistent only at {format_lsn(c.stop_lsn)}"
    return YES, ""


def _reaches(when: datetime, target: RecoveryTarget) -> bool:
    """Does a transaction ending at `when` make recovery stop for this time target?"""
    assert target.time is not None
    return when >= target.time if target.inclusive is False else when > target.time


def _resolve_same_second(backup: Backup, target: RecoveryTarget,
                         archive: WalArchive) -> tuple[str, str] | None:
    """Settle a time target inside the backup's recovery-time second by reading its WAL."""
    c = backup.control
    if c.stream or target.time is None:
        return None
    try:
        times = xact_times_between(archive, c.timeline, c.start_lsn, c.stop_lsn)
    except PbkfsError:
        return None
    late = [t for t in times if _reaches(t, target)]
    if late:
        return NO, (f"backup {backup.id} is consistent only after a transaction that ended at "
                    f"{max(late).isoformat(sep=' ')}")
    return YES, ""


def _timeline_ok(backup: Backup, tli: int, history: list | None) -> bool:
    """pg_probackup's satisfy_timeline: the backup lies on `tli`'s history before a switch."""
    c = backup.control
    if c.timeline == tli:
        return True
    for entry in history or []:
        if entry.tli == c.timeline and c.stop_lsn <= entry.switchpoint:
            return True
    return False


def _resolve_timeline(requested: RecoveryTarget, archive: WalArchive) -> int | None:
    """The numeric timeline asked for (None: the backup's own, 'current')."""
    tl = requested.timeline
    if tl is None and requested.stop == "latest":
        tl = "latest"
    if tl in (None, "current"):
        return None
    if tl == "latest":
        return archive.newest_timeline()
    assert tl is not None
    return int(tl)


def _route(backup: Backup, tli: int, archive: WalArchive) -> list[RoutePiece]:
    """Which timeline each segment is read from, from the backup's start to timeline `tli`."""
    c = backup.control
    seg = archive.seg_size
    start = c.start_lsn // seg
    history = archive.history(tli) or []
    pieces = []
    for piece_tli, begin, end in timeline_path(history, tli):
        first = max(begin // seg, start)
        last = None if end is None else end // seg - 1
        if piece_tli < c.timeline or (last is not None and last < first):
            continue
        pieces.append(RoutePiece(piece_tli, first, last))
    return pieces


def _route_end(pieces: list[RoutePiece], archive: WalArchive) -> tuple[int, int] | None:
    """(timeline, segno) of the last segment replayable without a gap along the route."""
    last: tuple[int, int] | None = None
    for piece in pieces:
        segno = piece.first
        while piece.last is None or segno <= piece.last:
            if not archive.has_segment(piece.tli, segno):
                return last
            last = (piece.tli, segno)
            segno += 1
    return last


def plan_recovery(
    instance: Instance,
    requested: RecoveryTarget,
    backup_id: str | None = None,
    *,
    archive: WalArchive | None = None,
    force: bool = False,
    scan: bool = True,
) -> RecoveryPlan:
    """Choose the backup (given, or the newest suitable one) and the WAL for `requested`.

    UsageError when no backup can reach the target (it lies before every
    candidate's consistent point, or beyond the archive for an LSN or time
    target). With `scan`, time targets are checked against the transaction
    times in the archived WAL (the backup's own range, the archive's tail).
    """
    archive = archive or WalArchive.for_instance(instance)
    seg = archive.seg_size
    want_tli = _resolve_timeline(requested, archive)
    history = archive.history(want_tli) if want_tli else None
    notes: list[str] = []
    if backup_id is not None:
        candidates = [instance.backup(backup_id)]
    else:
        candidates = instance.newest_first()
    chosen: tuple[Backup, list[Backup], str] | None = None
    fallback: tuple[Backup, list[Backup], str] | None = None
    refusals: list[str] = []
    for backup in candidates:
        if backup_id is None and (not backup.readable or
                                  backup.control.status not in USABLE_STATUSES):
            continue
        try:
            chain = resolve_chain(instance, backup.id, force=force)
        except PbkfsError as exc:
            if backup_id is not None:
                raise
            notes.append(f"skipped backup {backup.id}: {exc}")
            continue
        if want_tli and not _timeline_ok(backup, want_tli, history):
            refusals.append(f"backup {backup.id} (timeline {backup.control.timeline}) is not "
                            f"on the history of timeline {want_tli}")
            continue
        verdict, why = consistent_before(backup, requested)
        if verdict == SAME_SECOND and scan and requested.kind == "time":
            verdict, why = _resolve_same_second(backup, requested, archive) or (verdict, why)
        if verdict == YES:
            chosen = (backup, chain, why)
            break
        if verdict == SAME_SECOND and fallback is None:
            fallback = (backup, chain, why)
        elif verdict == NO:
            refusals.append(why)
    if chosen is None and fallback is not None:
        chosen = fallback
        notes.append(fallback[2])
    if chosen is None:
        what = requested.describe()
        if want_tli and want_tli > 1 and history is None:
            refusals.append(f"the archive {archive.dir} has no history file for timeline "
                            f"{want_tli}")
        if backup_id is not None:
            raise UsageError(f"{what} is before the consistent point of backup "
                             f"{backup_id.upper()}: " + "; ".join(refusals))
        detail = "; ".join(refusals[-3:]) if refusals else "the instance has no valid backup"
        raise UsageError(f"no backup of instance {instance.name!r} can reach {what}: {detail}")
    backup, chain, _ = chosen
    c = backup.control

    target = requested
    recovery = True
    if requested.kind is None:
        if c.stream:
            recovery = False
            if requested.timeline:
                notes.append("--recovery-target-timeline is ignored without a recovery target "
                             "for a STREAM backup")
        else:
            target = requested.with_defaults("immediate", "promote")
    tli = want_tli or c.timeline

    needed = backup_segments(backup, seg)
    missing = () if c.stream else tuple(missing_in(archive, needed))
    pieces = _route(backup, tli, archive)
    end = _route_end(pieces, archive)
    if c.stream and (end is None or end[1] < needed.end):
        end = (c.timeline, needed.end)  # the backup's own pg_wal covers its range
    archive_end = segment_name(end[0], end[1], seg) if end else None
    wal_last: str | None = None
    kind = target.kind
    if kind == "immediate":
        wal_last = segment_name(c.timeline, needed.end, seg)
    elif kind == "lsn":
        assert target.lsn is not None
        lsn_seg = target.lsn // seg
        piece = next((p for p in pieces if p.first <= lsn_seg and
                      (p.last is None or lsn_seg <= p.last)), None)
        if piece is None:
            raise UsageError(f"{target.describe()} is not on the WAL route of backup {backup.id} "
                             f"to timeline {tli}")
        wal_last = segment_name(piece.tli, lsn_seg, seg)
        if end is None or (piece.tli, lsn_seg) > end:
            raise UsageError(f"{target.describe()} is beyond the archive: from backup "
                             f"{backup.id} the WAL is unbroken only up to "
                             f"{archive_end or 'nothing'} (in {archive.dir})")
    elif recovery:
        wal_last = archive_end
        checked = False
        if kind == "time" and scan and end is not None:
            route = [(p.tli, segno) for p in pieces
                     for segno in range(p.first, (p.last if p.last is not None else end[1]) + 1)
                     if (p.tli, segno) <= end]
            try:
                last = last_xact_time(archive, route)
            except PbkfsError:
                last = None
            if last is not None:
                checked = True
                when, where = last
                if not _reaches(when, target):
                    raise UsageError(
                        f"{target.describe()} is beyond the archive: the last transaction in "
                        f"the WAL from backup {backup.id} ended at "
                        f"{when.isoformat(sep=' ')} (segment {where}); "
                        "--recovery-target=latest replays all of it")
                notes.append(f"the archive's last transaction ended at "
                             f"{when.isoformat(sep=' ')} (segment {where})")
        if kind in ("time", "xid", "name") and not checked:
            notes.append(f"PostgreSQL stops with 'recovery ended before configured recovery "
                         f"target was reached' if the target is not in the WAL up to "
                         f"{archive_end or 'the backup stop'}")
    return RecoveryPlan(
        backup=backup,
        chain=tuple(b.id for b in chain),
        requested=requested,
        target=target,
        recovery=recovery,
        timeline=tli,
        needed=needed,
        missing=missing,
        wal_first=segment_name(c.timeline, needed.begin, seg),
        wal_last=wal_last,
        archive_end=archive_end,
        notes=tuple(notes),
    )


@dataclass(frozen=True)
class WalProblem:
    """One segment a backup needs that the archive cannot deliver."""

    segment: str
    problem: str  # "missing" or what is wrong with every stored copy

    def __str__(self) -> str:
        return f"{self.segment}: {self.problem}"


def check_archive_covers(
    instance: Instance,
    backup: Backup,
    *,
    archive: WalArchive | None = None,
    verify: bool = True,
) -> list[WalProblem]:
    """Problems with the segments from `backup`'s start to its stop LSN ([] when all is well).

    A mount's pre-check: STREAM backups carry that WAL themselves (always []).
    With `verify`, every segment is also decompressed and its page header
    checked, so a damaged copy is reported before PostgreSQL meets it.
    """
    if backup.control.stream:
        return []
    archive = archive or WalArchive.for_instance(instance)
    needed = backup_segments(backup, archive.seg_size)
    problems = []
    for segno in range(needed.begin, needed.end + 1):
        name = segment_name(needed.tli, segno, archive.seg_size)
        if not archive.has_segment(needed.tli, segno) and not archive.candidates(name):
            problems.append(WalProblem(name, "missing"))
            continue
        if verify:
            try:
                archive.fetch(name)
            except (CorruptionError, CatalogError) as exc:
                problems.append(WalProblem(name, f"damaged ({exc})"))
    return problems


def require_archive_covers(instance: Instance, backup: Backup, *,
                           archive: WalArchive | None = None, verify: bool = True) -> None:
    """CatalogError naming every missing or damaged segment, for the mount's pre-check."""
    problems = check_archive_covers(instance, backup, archive=archive, verify=verify)
    if problems:
        raise CatalogError(instance.wal_dir, f"backup {backup.id} cannot become consistent: "
                           f"{len(problems)} WAL segment(s) between its start and stop LSN "
                           "cannot be delivered: " + "; ".join(str(p) for p in problems))

