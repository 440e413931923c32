"""Per-mount kernel settings pbkfs adjusts (root only; best effort)."""

from __future__ import annotations

import logging
import os

from pbkfs.mount.mountinfo import mounts_at

BDI_MAX_RATIO = int(os.environ.get("PBKFS_BDI_MAX_RATIO", "20"))
_logger = logging.getLogger("pbkfs.mount")


def mount_device(mnt: str) -> str | None:
    """major:minor of the mount at `mnt`, from mountinfo (never stat our own mount)."""
    at = mounts_at(mnt)
    return at[0].device if at else None


# read_ahead_kb: a sequential scan keeps several reads in flight, spread over the workers
# (reads of files never written are routed by chunk), so cold data decodes on every CPU.
BDI_SETTINGS = {"strict_limit": "0", "max_ratio": str(BDI_MAX_RATIO), "read_ahead_kb": "1024"}


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


