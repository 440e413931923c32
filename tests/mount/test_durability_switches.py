"""--perf-unsafe (fsync deferred to unmount, dirty marker) and --no-wal (pg_wal outside the
diff, the diff not resumable); with PostgreSQL on the mount: tests/postgres/."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.mounting import (
    force_unmount,
    is_mounted,
    kill9_mount,
    mounted,
    pbkfs,
    stat_json,
)


@pytest.fixture
def old_base(work: Path) -> Path:
    """A plain directory to mount: one file, `old`."""
    b = work / "base"
    b.mkdir()
    (b / "old").write_bytes(b"old\n" * 100)
    return b


def write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def plain_mount(mnt: Path, diff: Path, base: Path, *extra: str
                ) -> subprocess.CompletedProcess[str]:
    mnt.mkdir(exist_ok=True)
    return pbkfs("mount", "-D", str(mnt), "-d", str(diff), "--workers", "2",
                 "--plain-base", str(base), *extra, check=False)


def test_perf_unsafe_defers_fsync_and_clean_unmount_persists(work: Path, old_base: Path) -> None:
    mnt, diff = work / "mnt", work / "diff"
    data = os.urandom(300_000)
    with mounted(mnt, diff, plain=old_base, extra=["--perf-unsafe"]):
        assert (diff / "dirty").exists()
        write_synced(mnt / "new", data)
        os.sync()
        figures = stat_json(mnt)
        assert figures["fsyncs"] >= 1 and figures["deferred_fsyncs"] >= 1
        assert figures["journal_syncs"] == 0  # a real fsync of a new file syncs the journal
    assert not (diff / "dirty").exists()
    with mounted(mnt, diff, plain=old_base):
        assert (mnt / "new").read_bytes() == data
        write_synced(mnt / "other", b"x")
        assert stat_json(mnt)["journal_syncs"] >= 1
        assert not (diff / "dirty").exists()


def test_perf_unsafe_crash_leaves_dirty_diff_refused_without_force(
    work: Path, old_base: Path
) -> None:
    mnt, diff = work / "mnt", work / "diff"
    mnt.mkdir()
    try:
        proc = plain_mount(mnt, diff, old_base, "--perf-unsafe")
        assert proc.returncode == 0, proc.stderr
        (mnt / "new").write_bytes(b"written\n")
    finally:
        kill9_mount(diff)
        force_unmount(mnt, diff)
    assert (diff / "dirty").exists()
    refused = plain_mount(mnt, diff, old_base)
    assert refused.returncode != 0
    assert str(diff) in refused.stderr and "--force" in refused.stderr
    assert "--perf-unsafe" in refused.stderr and "Traceback" not in refused.stderr
    assert not is_mounted(mnt)
    with mounted(mnt, diff, plain=old_base, extra=["--force"]):
        assert (mnt / "old").read_bytes() == b"old\n" * 100
    assert not (diff / "dirty").exists()  # a clean unmount: trusted again
    with mounted(mnt, diff, plain=old_base):
        pass


def test_no_wal_needs_a_new_diff_and_excludes_local_wal(work: Path, old_base: Path) -> None:
    mnt, diff = work / "mnt", work / "diff"
    with mounted(mnt, diff, plain=old_base):
        pass
    proc = plain_mount(mnt, diff, old_base, "--no-wal")
    assert proc.returncode != 0 and "new diff directory" in proc.stderr
    proc = plain_mount(mnt, work / "diff2", old_base, "--no-wal", "--local-wal")
    assert proc.returncode != 0 and "--local-wal" in proc.stderr
    assert not is_mounted(mnt)
    with mounted(mnt, diff, plain=old_base):  # the refusal did not spoil the old diff
        assert (mnt / "old").exists()


def test_perf_unsafe_keeps_the_dirty_marker_when_a_worker_died(
    work: Path, old_base: Path
) -> None:
    """A worker killed during a --perf-unsafe mount took deferred fsyncs with it: even a
    clean unmount must not clear the dirty marker (it used to: the new worker's sync at
    unmount had nothing open and reported success)."""
    mnt, diff = work / "mnt", work / "diff"
    with mounted(mnt, diff, plain=old_base, extra=["--perf-unsafe"]):
        write_synced(mnt / "old", b"changed\n")  # a backup file: bits live in the worker
        from tests.support.mounting import mount_pids

        frontend, *workers = mount_pids(diff)
        for pid in workers:
            os.kill(pid, 9)
        deadline = time.monotonic() + 60
        while sum(w["restarts"] for w in stat_json(mnt)["workers"]) < len(workers):
            assert time.monotonic() < deadline, "workers were not restarted"
            time.sleep(0.1)
    assert (diff / "dirty").exists()
    assert "stays marked dirty" in (diff / "pbkfs.log").read_text()
