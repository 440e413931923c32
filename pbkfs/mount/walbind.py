"""pg_wal of a mounted data directory, bind-mounted from the diff's `wal/` directory.

PostgreSQL writes and fsyncs WAL for every commit. Through FUSE each of those is a round
trip to the mount process; on a bind mount of a plain directory of the diff they go
straight to the host's file system, and the mount still shows `pg_wal` as the directory
restore makes (a symlink would show up as one). The diff stays self-contained: the WAL
lives in `<diff>/wal` and the next mount binds it again.

A bind mount under the FUSE mount (a submount) must go first when the mount goes:
`pbkfs unmount` unmounts it (refused while PostgreSQL has WAL files open, as the mount
itself is), the mount process detaches it lazily when it stops on an error, and
`unmount --force` detaches it lazily before the mount.
"""

from __future__ import annotations

import os
import subprocess

from pbkfs.mount.mountinfo import mounts

WAL_NAME = "pg_wal"


def bind_wal(wal: str, mnt: str) -> None:
    """Bind `wal` over `<mnt>/pg_wal` (root). The caller must keep answering FUSE
    requests meanwhile: the kernel looks the mount point up through the mount."""
    res = subprocess.run(["mount", "--bind", wal, os.path.join(mnt, WAL_NAME)],
                         capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0:
        raise OSError(f"binding {wal} over {mnt}/{WAL_NAME} failed: "
                      f"{res.stderr.strip() or res.returncode}")


def submounts(mnt: str) -> list[str]:
    """Mount points below `mnt` (pg_wal's bind), deepest and newest first."""
    prefix = os.path.abspath(mnt).rstrip("/") + "/"
    found = [m.mountpoint for m in mounts() if m.mountpoint.startswith(prefix)]
    return sorted(found, key=lambda p: (p.count("/"), found.index(p)), reverse=True)


def release_submounts(mnt: str, lazy: bool) -> str:
    """Unmount what is mounted below `mnt`; "" if all went, else umount's complaint
    (a busy submount: files open there)."""
    for sub in submounts(mnt):
        cmd = ["umount", "-l", sub] if lazy else ["umount", sub]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if res.returncode != 0 and sub in submounts(mnt):
            return res.stderr.strip() or f"umount {sub} failed"
    return ""
