"""Checks before anything is mounted or written: FUSE, mount point, owner, backup links.

Each refusal names what is wrong; none of them touches the store or the diff.
Nothing here stats a path that may be a (possibly hung) FUSE mount.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat

from pbkfs.errors import CorruptionError, UsageError
from pbkfs.mount.mountinfo import is_mounted
from pbkfs.mount.runtime import live_record
from pbkfs.view.source import Source


def resolve_owner(owner: str | None, mountpoint: str) -> tuple[int, int]:
    """--owner USER[:GROUP] or the owner of the mount point."""
    if owner:
        user, _, group = owner.partition(":")
        try:
            pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except KeyError:
            raise UsageError(f"--owner {owner}: no such user") from None
        gid = pw.pw_gid
        if group:
            try:
                gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
            except KeyError:
                raise UsageError(f"--owner {owner}: no such group") from None
        return pw.pw_uid, gid
    st = os.stat(mountpoint)
    return st.st_uid, st.st_gid


def check_mountpoint(mnt: str) -> None:
    if not os.path.exists(mnt):
        raise UsageError(f"mount point {mnt} does not exist")
    if not os.path.isdir(mnt):
        raise UsageError(f"mount point {mnt} is not a directory")
    if is_mounted(mnt):
        raise UsageError(f"mount point {mnt} is already a mount point")
    rec = live_record(mnt)
    if rec is not None:  # detached lazily, its process still serving: keep it findable
        raise UsageError(f"mount point {mnt} was detached, but its mount process {rec.pid} "
                         f"still runs; stop it first (pbkfs unmount -D {mnt} --force)")
    if os.listdir(mnt):
        raise UsageError(f"mount point {mnt} is not empty")


FUSE_DEVICE = (10, 229)  # misc major, FUSE minor


def check_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        raise UsageError("/dev/fuse is missing (load the fuse module, or give the container "
                         "--device /dev/fuse)")
    st = os.stat("/dev/fuse")
    if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != FUSE_DEVICE:
        raise UsageError("/dev/fuse is not the FUSE device (expected character device 10:229, "
                         f"found {os.major(st.st_rdev)}:{os.minor(st.st_rdev)})")
    from shutil import which

    if which("fusermount3") is None:
        raise UsageError("fusermount3 is not installed (package fuse3)")


def check_entries(source: Source) -> None:
    """Backup symlinks must stay inside the data directory (else writes could land anywhere)."""
    for e in source.entries():
        if e.kind != "l":
            continue
        target = e.target
        if target.startswith("/") or _escapes(e.path, target):
            raise CorruptionError(e.path, f"symlink to {target!r} leads out of the data "
                                  "directory; refusing to mount it")


def _escapes(path: str, target: str) -> bool:
    """Does a relative link at `path` to `target` resolve outside the root?"""
    stack = path.split("/")[:-1]
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return True
            stack.pop()
        else:
            stack.append(part)
    return False


