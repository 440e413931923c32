"""Reads of diff blocks are served by the frontend from shared memory (no worker round
trip) right after a remount and after a worker restart: the first read of an object
teaches the frontend its shared-memory slot (counted by `pbkfs stat`)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from pbkfs.mount.runtime import read_record
from tests.support.mounting import mounted, stat_json

BS = 8192


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def frontend_reads(mnt: Path) -> int:
    return int(stat_json(mnt)["reads"]["frontend"])


def read_twice_cold(path: Path, want: bytes) -> None:
    """Two reads with the kernel's cache dropped before each: both reach the mount."""
    for _ in range(2):
        drop_caches()
        assert path.read_bytes() == want


def test_diff_blocks_are_read_in_the_frontend_after_remount_and_worker_restart(
    work: Path,
) -> None:
    base = work / "base"
    base.mkdir()
    (base / "rel").write_bytes(bytes(range(256)) * (8 * BS // 256))
    mnt, diff = work / "mnt", work / "diff"
    new = b"N" * (8 * BS)
    with mounted(mnt, diff, plain=base):
        fd = os.open(mnt / "rel", os.O_WRONLY)
        try:
            os.pwrite(fd, new, 0)  # every block of the backup file is now in the diff
            os.fsync(fd)
        finally:
            os.close(fd)

    with mounted(mnt, diff, plain=base):  # a remount: no slot known yet
        before = frontend_reads(mnt)
        read_twice_cold(mnt / "rel", new)
        assert frontend_reads(mnt) > before, "no read was served from shared memory"

        rec = read_record(str(mnt))
        assert rec is not None
        restarts = sum(w["restarts"] for w in stat_json(mnt)["workers"])
        for pid in rec.workers:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while sum(w["restarts"] for w in stat_json(mnt)["workers"]) < restarts + len(rec.workers):
            assert time.monotonic() < deadline, "the killed workers were never replaced"
            time.sleep(0.1)
        before = frontend_reads(mnt)
        read_twice_cold(mnt / "rel", new)
        assert frontend_reads(mnt) > before, "no read was served from shared memory after a restart"
