"""A branch's own pg_wal: the WAL of its parent that recovery can still need, copied.

With pg_wal in a plain directory of the diff (the default layout), WAL is not
part of the namespace, so the layers do not carry it: the first mount of a
branch copies the parent's `wal/`. Only what PostgreSQL can still read is
copied: every file that is not a WAL segment (timeline history, archive
status), and the segments that hold WAL written for their own position, those
whose first page header carries the segment's own address. Segments recycled
for later use carry an old address and hold nothing recovery reads, so the
copy is bounded by the WAL since the parent's last checkpoint, not by the size
of the parent's diff.
"""

from __future__ import annotations

import os
import re
import shutil
import struct

from pbkfs.diff.directory import DiffDir
from pbkfs.fs.namespace import Namespace
from pbkfs.fsutil import fsync_dir

SEGMENT_NAME = re.compile(r"^[0-9A-F]{24}$")
_PAGE_HEADER = struct.Struct("<HHIQ")  # xlp_magic, xlp_info, xlp_tli, xlp_pageaddr


def holds_own_wal(path: str, name: str) -> bool:
    """Does segment file `name` start with a page written for its own position?"""
    size = os.path.getsize(path)
    if size <= 0 or size & (size - 1):
        return False
    with open(path, "rb") as f:
        head = f.read(_PAGE_HEADER.size)
    if len(head) < _PAGE_HEADER.size:
        return False
    _magic, _info, _tli, pageaddr = _PAGE_HEADER.unpack(head)
    segno = int(name[8:16], 16) * (0x1_0000_0000 // size) + int(name[16:24], 16)
    return pageaddr == segno * size


def copy_wal(src: str, dst: str, uid: int, gid: int) -> tuple[int, int]:
    """Copy what recovery can need from `src` to `dst`; (files copied, segments skipped)."""
    copied = skipped = 0
    os.makedirs(dst, mode=0o700, exist_ok=True)
    made = [dst]
    for root, dirs, files in os.walk(src):
        rel = os.path.relpath(root, src)
        target = dst if rel == "." else os.path.join(dst, rel)
        for d in dirs:
            os.makedirs(os.path.join(target, d), mode=0o700, exist_ok=True)
            os.lchown(os.path.join(target, d), uid, gid)
            made.append(os.path.join(target, d))
        for name in files:
            path = os.path.join(root, name)
            if rel == "." and SEGMENT_NAME.match(name) and not holds_own_wal(path, name):
                skipped += 1
                continue
            out = os.path.join(target, name)
            shutil.copyfile(path, out, follow_symlinks=False)
            shutil.copymode(path, out)
            with open(out, "rb+") as f:
                os.fsync(f.fileno())
            os.lchown(out, uid, gid)
            copied += 1
    for d in reversed(made):
        fsync_dir(d)
    os.chown(dst, uid, gid)
    os.chmod(dst, os.stat(src).st_mode & 0o7777)
    fsync_dir(os.path.dirname(dst))
    return copied, skipped


def setup_branch_wal(ns: Namespace, diff: DiffDir, parent: DiffDir, uid: int, gid: int,
                     bind: bool) -> tuple[int, int]:
    """First mount of a branch with local WAL: its own copy, and pg_wal pointing to it.

    With the symlink layout the inherited pg_wal points at the parent's `wal/`:
    it is made again, pointing at this diff's (recorded by the snapshot the
    caller writes next).
    """
    counts = copy_wal(parent.wal, diff.wal, uid, gid)
    if not bind:
        ns.replaying = True
        try:
            if "pg_wal" in (ns.root.children or {}):
                ns.unlink(ns.root.ino, "pg_wal")
            made = ns.create(ns.root.ino, "pg_wal", "l", 0o777, uid, gid, target=diff.wal)
            made.lookups = 0
        finally:
            ns.replaying = False
    return counts
