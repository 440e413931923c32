"""PostgreSQL recovery of a mounted backup (layer 6 of 10).

Owns recovery targets, choosing the backup for a target, checking that the
WAL archive covers it, the recovery files and settings a first mount writes,
and what the diff records about it (`mountplan`). "Recovery" here always
means PostgreSQL's; repairing a diff after a crash is `pbkfs.fs.settle`.
Imports diff, view, walarchive, catalog and the root modules.
"""

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

__all__ = [
    "RecoveryFiles", "RecoveryPlan", "RecoveryStatus", "RecoveryTarget", "WalProblem",
    "check_archive_covers", "default_program", "inspect_recovery", "inspect_recovery_dir",
    "parse_target", "plan_recovery", "recovery_files", "recovery_target_options",
    "require_archive_covers", "restore_command", "target_from_options",
]
