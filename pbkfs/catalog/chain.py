"""Resolving and validating a backup chain: target ... FULL (format spec §1.4)."""

from __future__ import annotations

from pathlib import Path

from pbkfs import SUPPORTED_PROGRAM_VERSION
from pbkfs.catalog.control import USABLE_STATUSES, version_number
from pbkfs.catalog.store import Backup, Instance
from pbkfs.errors import ChainError, PbkfsError
from pbkfs.proc import pid_alive

OLDEST_PROGRAM_VERSION = "2.4.0"  # page_header_map and n_blocks on every datafile
NEWEST_PROGRAM_VERSION = "2.8.99"  # lz4/zstd page codecs (not checked against real backups)
FORCEABLE_STATUSES = ("ORPHAN", "CORRUPT")


def resolve_chain(instance: Instance, backup_id: str, *, force: bool = False) -> list[Backup]:
    """The chain for `backup_id`, newest first, ending with its FULL; validated.

    `force` admits ORPHAN/CORRUPT members (as restore --force does); never
    RUNNING, ERROR, MERGING, MERGED, DELETING or DELETED ones.
    """
    target = instance.backup(backup_id)
    chain: list[Backup] = []
    seen: set[str] = set()
    current = target
    while True:
        if current.id in seen:
            raise ChainError(target.id, current.dir, "cycle in parent-backup-id links")
        seen.add(current.id)
        _check_member(current, target, force)
        chain.append(current)
        control = current.control
        if control.backup_mode == "FULL":
            break
        parent_id = control.parent_backup_id
        assert parent_id is not None  # checked when parsing
        parent = instance.backups.get(parent_id)
        if parent is None:
            raise ChainError(target.id, current.dir / "backup.control",
                             f"parent backup {parent_id} of {current.id} is missing "
                             "(broken chain)")
        current = parent
    _check_agreement(chain)
    return chain


def _check_member(backup: Backup, target: Backup, force: bool) -> None:
    try:
        control = backup.control
    except PbkfsError as exc:
        raise ChainError(target.id, backup.dir / "backup.control",
                         f"member {backup.id} is unreadable: {exc}") from exc
    status = control.status
    if status not in USABLE_STATUSES and not (force and status in FORCEABLE_STATUSES):
        hint = " (use --force to accept it)" if status in FORCEABLE_STATUSES else ""
        raise ChainError(target.id, backup.dir / "backup.control",
                         f"member {backup.id} has status {status}, not OK or DONE{hint}")
    pid_file = backup.dir / "backup.pid"
    # A pid is only meaningful on this host: a catalog in an object store was written
    # elsewhere (its backup.control status tells whether the backup finished).
    if isinstance(pid_file, Path) and pid_file.exists() and _pid_file_is_live(pid_file):
        raise ChainError(target.id, pid_file, f"member {backup.id} is locked by a running "
                         "pg_probackup")
    version = version_number(control.program_version)
    if version < version_number(OLDEST_PROGRAM_VERSION):
        raise ChainError(target.id, backup.dir / "backup.control",
                         f"member {backup.id} was made by pg_probackup {control.program_version}; "
                         f"backups older than {OLDEST_PROGRAM_VERSION} are not supported")
    if version > version_number(NEWEST_PROGRAM_VERSION):
        raise ChainError(target.id, backup.dir / "backup.control",
                         f"member {backup.id} was made by pg_probackup {control.program_version}, "
                         f"newer than this reader knows (up to {NEWEST_PROGRAM_VERSION}; "
                         f"checked against {SUPPORTED_PROGRAM_VERSION})")


def _pid_file_is_live(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return pid_alive(pid)


def _check_agreement(chain: list[Backup]) -> None:
    target = chain[0]
    want = target.control
    for member in chain[1:]:
        c = member.control
        for field in ("block_size", "xlog_block_size", "server_version"):
            if getattr(c, field) != getattr(want, field):
                raise ChainError(target.id, member.dir / "backup.control",
                                 f"member {member.id} has {field.replace('_', '-')} "
                                 f"{getattr(c, field)}, target has {getattr(want, field)}")
        if c.start_lsn > want.start_lsn:
            raise ChainError(target.id, member.dir / "backup.control",
                             f"parent {member.id} starts after its descendant")
