"""A live mount: find its diff directory and read the block maps its workers publish.

The mount process records itself (pid, diff directory, shared-memory segment
name) in the runtime record `pbkfs unmount` uses; the segment holds one region
per worker, each a table of (object id, bitmap, horizon) slots (`pbkfs.diff.sharedmaps`).
Reading it never writes: the segment is mapped read-only.
"""

from __future__ import annotations

import os

import posix_ipc

from pbkfs.diff.sharedmaps import Segment
from pbkfs.errors import UsageError
from pbkfs.mount.mountinfo import is_mounted
from pbkfs.mount.runtime import RuntimeRecord, read_record
from tools.blockmap.state import ObjMap


def find_mount(mountpoint: str) -> RuntimeRecord:
    """The runtime record of the pbkfs mount at `mountpoint` (its process must be alive)."""
    mnt = os.path.abspath(mountpoint)
    rec = read_record(mnt)
    if rec is None:
        what = "is mounted but not by pbkfs" if is_mounted(mnt) else "is not mounted"
        raise UsageError(f"{mnt} {what} (no pbkfs runtime record for it)")
    if not os.path.exists(f"/proc/{rec.pid}"):
        raise UsageError(f"{mnt}: the mount process {rec.pid} is gone; inspect the diff "
                         f"offline with --diff {rec.diff}")
    return rec


def shm_maps(shm_name: str) -> dict[int, ObjMap]:
    """Every published block map of the segment: object id -> bitmap and horizon."""
    try:
        seg = Segment.attach(shm_name, writable=False)
    except posix_ipc.ExistentialError:
        raise UsageError(f"shared memory {shm_name} of the mount is gone") from None
    try:
        out: dict[int, ObjMap] = {}
        for w in range(seg.workers):
            for _slot, fid, off, cap, horizon in seg.entries(w):
                out[fid] = ObjMap(bytes(seg.buf[off : off + cap]), horizon, None, "shm")
        return out
    finally:
        seg.close()
