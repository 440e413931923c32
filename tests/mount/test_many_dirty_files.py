"""More files written before their fsync than the mount's processes may hold open.

PostgreSQL's checkpoint writes to every file it dirtied and only then fsyncs them; a
data directory has thousands of files, and the usual soft limit is 1024 descriptors. The
mount raises its soft limit to the hard one and bounds its open objects by what it got:
past the bound, dirty objects are synced early and closed. Here the hard limit itself is
1024 (nothing to raise), 1200 backup files are written without an fsync, then all are
fsynced: no write or fsync fails, and after a remount with the kernel's cache dropped
every byte is there. A second mount under soft 1024 / hard 4096 shows the raise.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from pbkfs.mount.runtime import read_record
from tests.support.mounting import REPO, is_mounted, unmount

FILES = 1200
SIZE = 16384


@contextlib.contextmanager
def mounted_with_nofile(mnt: Path, diff: Path, base: Path, soft: int, hard: int
                        ) -> Iterator[int]:
    """A one-worker mount of `base` started under these descriptor limits (set in the
    `pbkfs mount` child only: this process may not raise its own back); its worker's pid."""
    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    mnt.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pbkfs.cli.entry", "mount", "-D", str(mnt), "-d", str(diff),
             "--plain-base", str(base), "--workers", "1"],
            capture_output=True, text=True, timeout=120, cwd=REPO, preexec_fn=limited)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rec = read_record(str(mnt))
        assert rec is not None and len(rec.workers) == 1
        yield rec.workers[0]
    finally:
        if is_mounted(mnt):
            unmount(mnt, diff)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def limits_of(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open-files line for {pid}")


def names() -> list[str]:
    return [f"d{i % 10}/f{i}" for i in range(FILES)]


def test_a_checkpoint_over_more_files_than_descriptors_loses_nothing(work: Path) -> None:
    base = work / "base"
    for name in names():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_bytes(b"b" * SIZE)
    mnt, diff = work / "mnt", work / "diff"
    hard_now = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    high = 4096 if hard_now == resource.RLIM_INFINITY else min(4096, hard_now)
    low = min(1024, high)
    with mounted_with_nofile(mnt, diff, base, low, low) as worker:
        assert limits_of(worker) == (low, low)
        for i, name in enumerate(names()):  # dirty every file first, as a checkpoint does
            fd = os.open(mnt / name, os.O_WRONLY)
            try:
                os.pwrite(fd, i.to_bytes(4, "little") * 2048, 0)
            finally:
                os.close(fd)
        for name in names():
            fd = os.open(mnt / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        assert len(os.listdir(f"/proc/{worker}/fd")) < low
    log = (diff / "pbkfs.log").read_text(errors="replace")
    assert "Too many open files" not in log, log[-3000:]
    drop_caches()
    with mounted_with_nofile(mnt, diff, base, low, high) as worker:
        assert limits_of(worker) == (high, high)  # the soft limit raised
        for i, name in enumerate(names()):
            assert (mnt / name).read_bytes() == i.to_bytes(4, "little") * 2048 + b"b" * 8192
