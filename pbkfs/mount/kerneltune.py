"""Per-mount kernel settings pbkfs adjusts (root only; best effort)."""

from __future__ import annotations

import logging
import os
import subprocess

from pbkfs.mount.mountinfo import mounts_at

BDI_MAX_RATIO = int(os.environ.get("PBKFS_BDI_MAX_RATIO", "20"))
_logger = logging.getLogger("pbkfs.mount")


def mount_device(mnt: str) -> str | None:
    """major:minor of the mount at `mnt` (the top one), from mountinfo (never stat our own
    mount)."""
    at = mounts_at(mnt)
    return at[-1].device if at else None


def connection_of(mnt: str) -> str:
    """The FUSE connection's name under /sys/fs/fuse/connections (the device's minor)."""
    dev = mount_device(mnt)
    return dev.split(":")[1] if dev else ""


def _fusectl_ready(conn: str) -> bool:
    if not os.path.isdir(os.path.join(FUSECTL, conn)):
        try:  # fusectl is not always mounted; root can mount it
            subprocess.run(["mount", "-t", "fusectl", "fusectl", FUSECTL], capture_output=True,
                           timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            pass
    return os.path.isdir(os.path.join(FUSECTL, conn))


def abort_connection(conn: str) -> bool:
    """Abort a FUSE connection: every request waiting on it fails at once.

    The only way out for a process stuck in the kernel on a mount whose server cannot
    answer (a thread in D state keeps the server's /dev/fuse open, so killing the server
    alone never ends the connection)."""
    if not conn or not _fusectl_ready(conn):
        return False
    try:
        with open(os.path.join(FUSECTL, conn, "abort"), "w") as f:
            f.write("1")
    except OSError:
        return False
    return True


# read_ahead_kb: a sequential scan keeps several reads in flight, spread over the workers
# (large reads of files never written are routed by chunk: `pbkfs.fs.vfs.read_route`), so
# cold data decodes on the CPUs the reader leaves free.
BDI_SETTINGS = {"strict_limit": "0", "max_ratio": str(BDI_MAX_RATIO), "read_ahead_kb": "1024"}


FUSECTL = "/sys/fs/fuse/connections"
# WRITEs are answered once a worker has written them, so the kernel's writeback keeps
# more of them in flight (its default is 12 background requests, 9 before congestion).
MAX_BACKGROUND = int(os.environ.get("PBKFS_MAX_BACKGROUND", "64"))
CONNECTION_SETTINGS = {"max_background": str(MAX_BACKGROUND),
                       "congestion_threshold": str(MAX_BACKGROUND * 3 // 4)}


def tune_connection(mnt: str) -> None:
    """More background requests per mount, through the fusectl file system (root only)."""
    minor = connection_of(mnt)
    if not minor:
        return
    _fusectl_ready(minor)
    conn = os.path.join(FUSECTL, minor)
    for name, value in CONNECTION_SETTINGS.items():
        try:
            with open(os.path.join(conn, name), "w") as f:
                f.write(value)
        except OSError as exc:
            _logger.warning(f"could not set {name}={value} for the mount ({exc.strerror})")
            return


def tune_bdi(mnt: str) -> None:
    """Let the kernel keep more dirty pages of this mount (root only; best effort).

    FUSE mounts start with strict_limit and max_ratio 1%: a writer past a few
    tens of MB of dirty pages is throttled and writeback runs constantly, one
    request per dirty page. PostgreSQL dirties its data files steadily between
    checkpoints, which then turns into a stream of small WRITEs and stalls.
    """
    dev = mount_device(mnt)
    if dev is None:
        return
    for name, value in BDI_SETTINGS.items():
        try:
            with open(f"/sys/class/bdi/{dev}/{name}", "w") as f:
                f.write(value)
        except OSError as exc:
            _logger.warning(f"could not set {name}={value} for the mount ({exc.strerror})")
            return


