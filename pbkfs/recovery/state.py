"""Has a mounted data directory finished recovery? (read from its files, never guessed)

PostgreSQL removes `recovery.signal` and renames `backup_label` to
`backup_label.old` when archive recovery ends and the server promotes, and
pg_control then says "in production" (or "shut down" after a clean stop)
on a new timeline. A diff in that state must not be given recovery settings
again on remount: it already is the recovered database. A server stopped
while paused at its target still has recovery.signal and recovers (to the
same target) on its next start, as it would after a restore.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pbkfs.catalog.pgcontrol import DB_STATES, PG_CONTROL, control_state

FINISHED_STATES = (1, 6)  # DBState "shut down", "in production"


@dataclass(frozen=True)
class RecoveryStatus:
    recovery_signal: bool
    standby_signal: bool
    backup_label: bool
    db_state: int | None  # None: pg_control unreadable
    timeline: int | None

    @property
    def finished(self) -> bool:
        """Recovery is over: no signal file, no backup_label, pg_control in production/shut down."""
        return (not self.recovery_signal and not self.standby_signal and not self.backup_label
                and self.db_state in FINISHED_STATES)

    @property
    def started(self) -> bool:
        """PostgreSQL has run on this directory (backup_label consumed or state changed)."""
        return not self.backup_label or self.db_state not in (6, None)

    def describe(self) -> str:
        state = DB_STATES.get(self.db_state, "unknown") if self.db_state is not None \
            else "unreadable"
        files = [n for n, present in (("recovery.signal", self.recovery_signal),
                                      ("standby.signal", self.standby_signal),
                                      ("backup_label", self.backup_label)) if present]
        verdict = "recovery finished" if self.finished else "recovery not finished"
        return (f"{verdict}: pg_control says {state!r} on timeline {self.timeline}; "
                f"present: {', '.join(files) or 'no signal file, no backup_label'}")


def inspect_recovery(read: Callable[[str], bytes | None]) -> RecoveryStatus:
    """Status from `read(path)` (content of a file relative to the data directory, None if
    absent) — e.g. the mount's merged view of backup + diff."""
    control = read(PG_CONTROL)
    state, tli = control_state(control) if control is not None else (None, None)
    return RecoveryStatus(
        recovery_signal=read("recovery.signal") is not None,
        standby_signal=read("standby.signal") is not None,
        backup_label=read("backup_label") is not None,
        db_state=state,
        timeline=tli,
    )


def inspect_recovery_dir(datadir: str | os.PathLike[str]) -> RecoveryStatus:
    """inspect_recovery on a plain directory (or a live mount point)."""
    root = Path(datadir)

    def read(rel: str) -> bytes | None:
        try:
            with open(root / rel, "rb") as f:
                return f.read(512)
        except FileNotFoundError:
            return None

    return inspect_recovery(read)
