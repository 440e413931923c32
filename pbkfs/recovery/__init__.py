"""PostgreSQL recovery of a mounted backup (layer 7 of 11).

Owns recovery targets, choosing the backup for a target, checking that the
WAL archive covers it, the recovery files and settings a first mount writes,
and what the diff records about it (`mountplan`). "Recovery" here always
means PostgreSQL's; repairing a diff after a crash is `pbkfs.fs.settle`.
Imports diff, view, walarchive, catalog and the root modules. The names below load on
first use (PEP 562), so `pbkfs mount` can take its option parsing from here without
loading the catalog and codecs before it has started the mount process.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "RecoveryFiles": "files", "default_program": "files", "recovery_files": "files",
    "restore_command": "files",
    "recovery_target_options": "options", "target_from_options": "options",
    "RecoveryPlan": "plan", "WalProblem": "plan", "check_archive_covers": "plan",
    "plan_recovery": "plan", "require_archive_covers": "plan",
    "RecoveryStatus": "state", "inspect_recovery": "state", "inspect_recovery_dir": "state",
    "RecoveryTarget": "target", "parse_target": "target",
}

if TYPE_CHECKING:
    from pbkfs.recovery.files import RecoveryFiles, default_program, recovery_files, restore_command
    from pbkfs.recovery.options import recovery_target_options, target_from_options
    from pbkfs.recovery.plan import (
        RecoveryPlan,
        WalProblem,
        check_archive_covers,
        plan_recovery,
        require_archive_covers,
    )
    from pbkfs.recovery.state import RecoveryStatus, inspect_recovery, inspect_recovery_dir
    from pbkfs.recovery.target import RecoveryTarget, parse_target


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "RecoveryFiles", "RecoveryPlan", "RecoveryStatus", "RecoveryTarget", "WalProblem",
    "check_archive_covers", "default_program", "inspect_recovery", "inspect_recovery_dir",
    "parse_target", "plan_recovery", "recovery_files", "recovery_target_options",
    "require_archive_covers", "restore_command", "target_from_options",
]
assert sorted(__all__) == sorted(_WHERE)
