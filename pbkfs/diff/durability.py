"""The durability switches of a mount: --perf-unsafe (deferred fsync) and --no-wal.

--perf-unsafe: fsync only records; everything is made durable at a clean unmount
(the workers sync all they wrote, the journal is synced). While such a mount
lives, `<diff>/dirty` exists; a crash leaves it behind, and the next mount
refuses the diff without --force because acknowledged fsyncs may be lost.

--no-wal: pg_wal is a symlink to a scratch directory outside the diff, removed
at unmount. The diff's data files then run ahead of any WAL that could replay
them, so its binding says it is not resumable and later mounts refuse it.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from pbkfs.errors import UsageError
from pbkfs.fsutil import fsync_dir

DIRTY = "dirty"


def dirty_path(diff: str) -> str:
    return os.path.join(diff, DIRTY)


def check_dirty(diff: str, force: bool) -> bool:
    """Refuse a diff left dirty by a --perf-unsafe mount (unless forced); True if dirty."""
    path = dirty_path(diff)
    if not os.path.exists(path):
        return False
    if not force:
        raise UsageError(
            f"diff directory {diff} was mounted with --perf-unsafe and not unmounted cleanly "
            f"({path} exists): changes PostgreSQL believed fsynced may be lost. Mount with "
            "--force to use it anyway (then check the database), or remove the diff with "
            "`pbkfs cleanup`"
        )
    return True


def mark_dirty(diff: str) -> None:
    """Durably create the marker before the mount answers."""
    fd = os.open(dirty_path(diff), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, b"mounted with --perf-unsafe; removed by a clean unmount\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(diff)


def clear_dirty(diff: str) -> None:
    """After a clean unmount (everything synced): the diff is trustworthy again."""
    try:
        os.unlink(dirty_path(diff))
    except FileNotFoundError:
        return
    fsync_dir(diff)


def not_resumable_error(diff: str) -> UsageError:
    return UsageError(
        f"diff directory {diff} was made with --no-wal and is not resumable: its WAL was "
        "never kept, so PostgreSQL could not recover from it. Remove it with "
        f"`pbkfs cleanup -d {diff}` and mount with a new diff directory"
    )


def make_scratch(uid: int, gid: int) -> str:
    """Where a --no-wal mount keeps pg_wal: outside the diff, gone at unmount."""
    path = tempfile.mkdtemp(prefix="pbkfs-nowal-")
    os.chown(path, uid, gid)
    return path


def remove_scratch(path: str) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)
