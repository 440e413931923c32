"""Recovery for a mount: which backup to mount, the WAL it needs, what the first mount adds.

Decided in the `pbkfs mount` command before the mount process starts, so a
bad target or a hole in the WAL archive is refused before anything is
mounted. Only the first mount of a diff adds `recovery.signal` and recovery
settings (as restore does); the target is recorded in the diff so a remount
never recovers again and refuses a different target.
"""

from __future__ import annotations

import os

import msgspec

from pbkfs.catalog.store import Store
from pbkfs.diff.directory import DiffDir, write_atomic
from pbkfs.errors import UsageError
from pbkfs.recovery import RecoveryTarget, plan_recovery, recovery_files, require_archive_covers

STATE_FILE = "recovery.json"


class MountRecovery(msgspec.Struct):
    """What the first mount of a diff writes into it for recovery (empty: nothing)."""

    backup_id: str
    options: dict[str, str] = {}
    create: dict[str, bytes] = {}
    auto_conf_append: bytes = b""
    describe: str = ""


def saved_options(diff: str) -> dict[str, str] | None:
    """The recovery options a diff was first mounted with, or None for a fresh diff."""
    try:
        with open(os.path.join(diff, STATE_FILE), "rb") as f:
            return msgspec.json.decode(f.read(), type=dict[str, str])
    except FileNotFoundError:
        return None
    except msgspec.DecodeError as exc:
        raise UsageError(f"{os.path.join(diff, STATE_FILE)}: unreadable ({exc})") from None


def save_options(diff: str, options: dict[str, str]) -> None:
    write_atomic(os.path.join(diff, STATE_FILE), msgspec.json.encode(options))


def plan_mount(store: str, instance: str, backup_id: str | None, target: RecoveryTarget,
               diff: str) -> MountRecovery:
    """The backup to mount and the recovery files of a first mount, checked against the
    archive; on a remount, the bound backup and nothing to add."""
    binding = DiffDir(diff).read_binding() if os.path.isdir(diff) else None
    given = target.as_options()
    if binding is not None:
        saved = saved_options(diff) or {}
        if target.kind is not None and given != saved:
            raise UsageError(
                f"diff directory {diff} was first mounted with recovery target "
                f"{saved or 'none'}; it cannot recover again to {given} (use a new diff)")
        bound = binding.source.backup_id
        if backup_id is not None and backup_id.upper() != bound.upper():
            return MountRecovery(backup_id)  # the binding check names the conflict
        return MountRecovery(bound)
    inst = Store(store).instance(instance)
    if backup_id is None and target.kind is None:
        raise UsageError("missing -i/--backup-id: give the backup to mount, or a "
                         "--recovery-target-* option to let pbkfs choose it")
    plan = plan_recovery(inst, target, backup_id)
    if plan.recovery:
        require_archive_covers(inst, plan.backup)
    files = recovery_files(plan, store)
    return MountRecovery(plan.backup.id, plan.target.as_options() if plan.recovery else {},
                         dict(files.create), files.auto_conf_append, plan.describe())
