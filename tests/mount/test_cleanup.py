"""`pbkfs cleanup -d DIFF [--force]` around real mounts: an idle diff is wiped, a mounted one
refused naming the mount, a killed mount's lock recovered."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pbkfs.mount.runtime import read_record
from tests.support.mounting import cleanup, is_mounted, kill9_mount, mount_pids, mounted
from tests.support.trees import names_and_sizes


def test_idle_diff_is_wiped_and_remount_starts_fresh(work: Path, base: Path) -> None:
    mnt, diff = work / "mnt", work / "diff"
    with mounted(mnt, diff, plain=base):
        (mnt / "dir" / "new").write_bytes(b"made in the mount")
    assert (diff / "binding.json").exists()
    proc = cleanup(diff)
    assert proc.returncode == 0, proc.stderr
    assert "wiped" in proc.stdout
    assert diff.is_dir() and os.listdir(diff) == []
    with mounted(mnt, diff, plain=base):
        assert not (mnt / "dir" / "new").exists()
        assert (mnt / "dir" / "file").read_bytes() == b"content\n" * 1000


def test_in_use_is_refused_naming_the_mount_even_with_force(work: Path, base: Path) -> None:
    mnt, diff = work / "mnt", work / "diff"
    with mounted(mnt, diff, plain=base):
        with open(mnt / "dir" / "new", "wb") as f:
            f.write(b"kept")
            f.flush()
            os.fsync(f.fileno())  # write-behind: the diff holds it now, not later
        before = names_and_sizes(diff)
        pid = mount_pids(diff)[0]
        for extra in ((), ("--force",)):
            proc = cleanup(diff, *extra)
            assert proc.returncode != 0
            assert "in use" in proc.stderr
            assert f"pid {pid}" in proc.stderr
            assert socket.gethostname() in proc.stderr and str(mnt) in proc.stderr
            assert names_and_sizes(diff) == before
        assert (mnt / "dir" / "new").read_bytes() == b"kept"


def test_dead_mount_lock_is_recovered(work: Path, base: Path) -> None:
    """kill -9 of the mount: the lock's owner is gone, cleanup says so and wipes."""
    mnt, diff = work / "mnt", work / "diff"
    with mounted(mnt, diff, plain=base):
        (mnt / "dir" / "new").write_bytes(b"x")
        pid = mount_pids(diff)[0]
        kill9_mount(diff)
        proc = cleanup(diff)
        assert proc.returncode == 0, proc.stderr
        assert f"stale lock of pid {pid}" in proc.stdout
        assert "still attached" in proc.stdout and str(mnt) in proc.stdout
        assert os.listdir(diff) == []
        assert read_record(str(mnt)) is None  # the dead mount's runtime record went too
    assert not is_mounted(mnt)
