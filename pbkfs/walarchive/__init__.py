"""The WAL archive of an instance (`wal/<instance>/`): names, decoding, checks, timelines."""

from pbkfs.walarchive.archive import ArchivedFile, WalArchive, WalNotFound
from pbkfs.walarchive.history import HistoryEntry, parse_history
from pbkfs.walarchive.timelines import Coverage, SegmentRange, Timeline, archive_timelines, coverage

__all__ = [
    "ArchivedFile", "Coverage", "HistoryEntry", "SegmentRange", "Timeline", "WalArchive",
    "WalNotFound", "archive_timelines", "coverage", "parse_history",
]
