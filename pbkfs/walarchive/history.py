"""Timeline history files (`<tli>.history`), parsed as PostgreSQL reads them.

Each line is `<parent tli>\\t<switchpoint LSN>\\t<reason>`: the ancestors of
the timeline, oldest first, with the LSN where each one was left. Timeline 1
has no history file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pbkfs.errors import ParseError

_LINE = re.compile(r"\s*(\d+)\s+([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})(?:\s+(.*))?")


@dataclass(frozen=True)
class HistoryEntry:
    """Timeline `tli` was followed up to (not including) `switchpoint`."""

    tli: int
    switchpoint: int
    reason: str = ""


def parse_history(text: str, tli: int, path: object = "history") -> list[HistoryEntry]:
    """The ancestors of timeline `tli`, oldest first; ParseError on malformed content."""
    out: list[HistoryEntry] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            raise ParseError(path, f"not '<timeline>\\t<LSN>\\t<reason>': {line!r}", lineno)
        entry = HistoryEntry(int(m.group(1)), (int(m.group(2), 16) << 32) | int(m.group(3), 16),
                             (m.group(4) or "").strip())
        if out and entry.tli <= out[-1].tli:
            raise ParseError(path, "timeline IDs must be in increasing order", lineno)
        if out and entry.switchpoint < out[-1].switchpoint:
            raise ParseError(path, "switchpoints must not decrease", lineno)
        out.append(entry)
    if out and out[-1].tli >= tli:
        raise ParseError(path, f"ancestor timeline {out[-1].tli} is not below timeline {tli}")
    return out


def timeline_path(history: list[HistoryEntry], tli: int) -> list[tuple[int, int, int | None]]:
    """(timeline, begin LSN, end LSN or None) pieces PostgreSQL follows to reach `tli`."""
    pieces: list[tuple[int, int, int | None]] = []
    begin = 0
    for entry in history:
        pieces.append((entry.tli, begin, entry.switchpoint))
        begin = entry.switchpoint
    pieces.append((tli, begin, None))
    return pieces
