"""The WAL archive of an instance (`wal/<instance>/`) (layer 4 of 11).

Owns segment names, decoding of archived (compressed) segments, records,
timelines and history files, coverage checks and delivering a segment for
`archive-get`. Imports catalog, codecs and the root modules only.
"""

from pbkfs.walarchive.archive import ArchivedFile, WalArchive, WalNotFound
from pbkfs.walarchive.history import HistoryEntry, parse_history
from pbkfs.walarchive.timelines import Coverage, SegmentRange, Timeline, archive_timelines, coverage

__all__ = [
    "ArchivedFile", "Coverage", "HistoryEntry", "SegmentRange", "Timeline", "WalArchive",
    "WalNotFound", "archive_timelines", "coverage", "parse_history",
]
