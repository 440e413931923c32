"""The write path on a real mount, on a busy machine: no hang, no stale byte, full diffs.

Regression tests for the defects the earlier write-behind design had (docs/CONTRACT.md).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.load import cpu_hog, drop_caches
from tests.support.mounting import is_mounted, mounted, small_tmpfs

MiB = 1 << 20


def test_parallel_big_writers_finish_under_load(work: Path, base: Path) -> None:
    """Three `dd` of 200 MiB each into new files of one mount, in parallel, beside a CPU
    hog: all finish (the third used to hang in D state forever), and every byte reads back
    after the caches are dropped and after a remount."""
    mnt, diff = work / "mnt", work / "diff"
    with mounted(mnt, diff, plain=base):
        with cpu_hog():
            procs = [subprocess.Popen(
                ["timeout", "400", "dd", "if=/dev/urandom", f"of={mnt}/big{i}", "bs=1M",
                 "count=200", "conv=fsync"], stderr=subprocess.PIPE)
                for i in range(3)]
            errs = [p.communicate(timeout=420)[1] for p in procs]
            codes = [p.returncode for p in procs]
        assert codes == [0, 0, 0], errs
        drop_caches()
        sums = [_sha(mnt / f"big{i}") for i in range(3)]
        assert all((mnt / f"big{i}").stat().st_size == 200 * MiB for i in range(3))
    assert not is_mounted(mnt)
    with mounted(mnt, diff, plain=base):
        assert [_sha(mnt / f"big{i}") for i in range(3)] == sums


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def test_truncate_then_extend_never_brings_back_cut_bytes(work: Path, base: Path) -> None:
    """`truncate -s1; truncate -s3` of a backup file reads "c\\0\\0" after the kernel cache
    is dropped, and after a remount (it used to read the backup's bytes again)."""
    mnt, diff = work / "mnt", work / "diff"
    f = mnt / "dir" / "file"
    with mounted(mnt, diff, plain=base):
        subprocess.run(["truncate", "-s1", str(f)], check=True, timeout=60)
        subprocess.run(["truncate", "-s3", str(f)], check=True, timeout=60)
        drop_caches()
        assert f.read_bytes() == b"c\0\0"
        subprocess.run(["truncate", "-s5000", str(f)], check=True, timeout=60)
        subprocess.run(["truncate", "-s10000", str(f)], check=True, timeout=60)
        drop_caches()
        assert f.read_bytes() == b"c" + bytes(9999)
    with mounted(mnt, diff, plain=base):
        assert f.read_bytes() == b"c" + bytes(9999)


@pytest.fixture
def small_fs(work: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs for the diff: a disk that fills up."""
    with small_tmpfs(work / "small", "48m") as d:
        yield d


def test_full_diff_is_an_error_that_names_the_diff_and_heals(
    work: Path, base: Path, small_fs: Path
) -> None:
    """The diff's file system fills up: the writer gets ENOSPC (at write, close or fsync),
    the log names the full diff, what was fsynced before is intact, and once space is
    freed the same mount writes again."""
    mnt, diff = work / "mnt", small_fs / "diff"
    with mounted(mnt, diff, plain=base):
        (mnt / "kept").write_bytes(b"k" * 100_000)
        fd = os.open(mnt / "kept", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        proc = subprocess.run(
            ["timeout", "300", "dd", "if=/dev/zero", f"of={mnt}/filler", "bs=1M",
             "count=100", "conv=fsync"], capture_output=True, text=True)
        assert proc.returncode != 0
        assert "No space left on device" in proc.stderr, proc.stderr
        log = (diff / "pbkfs.log").read_text()
        assert f"the diff directory {diff} is full" in log
        os.unlink(mnt / "filler")
        dfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)  # the removal is durable: the object's space comes back
        os.close(dfd)
        deadline = time.monotonic() + 60
        while os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize < 24 * MiB:
            assert time.monotonic() < deadline, "the removed file's space never came back"
            time.sleep(0.05)
        drop_caches()
        assert (mnt / "kept").read_bytes() == b"k" * 100_000
        (mnt / "after").write_bytes(b"a" * 10_000)
        fd = os.open(mnt / "after", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    with mounted(mnt, diff, plain=base):
        assert (mnt / "kept").read_bytes() == b"k" * 100_000
        assert (mnt / "after").read_bytes() == b"a" * 10_000


def test_failed_write_reads_old_or_new_and_never_reaches_the_diff(
    work: Path, base: Path, small_fs: Path
) -> None:
    """A write of a backup file that the full diff cannot hold fails at fsync. Until the
    kernel drops its cache the file may show the lost bytes (as a local file system does
    after a failed writeback: PostgreSQL keeps working on them until its fsync fails, and
    its WAL stays consistent with the pages it saw); any later read, also by a new
    descriptor, shows per byte the old or the new content, never zeros or other bytes,
    and reading never fails for want of space; after a remount the backup's bytes."""
    mnt, diff = work / "mnt", small_fs / "diff"
    old, new = b"content\n" * 1000, b"LOST" * 1000 + b"content\n" * 500
    with mounted(mnt, diff, plain=base):
        subprocess.run(["timeout", "300", "dd", "if=/dev/zero", f"of={mnt}/filler", "bs=1M",
                        "count=100", "conv=fsync"], capture_output=True, check=False)
        # What is left of the tmpfs is less than an 8 KiB block: the next new block fails.
        with contextlib.suppress(OSError):
            while True:
                with open(mnt / "filler", "ab") as f:
                    f.write(bytes(4096))
                    f.flush()
                    os.fsync(f.fileno())
        fd = os.open(mnt / "dir" / "file", os.O_WRONLY)
        try:
            os.pwrite(fd, b"LOST" * 1000, 0)
            with pytest.raises(OSError) as failed:
                os.fsync(fd)
            assert failed.value.errno == errno.ENOSPC
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
        for _ in range(2):  # from the kernel's cache, then from the mount
            got = (mnt / "dir" / "file").read_bytes()
            assert len(got) == len(old)
            assert all(g in (o, n) for g, o, n in zip(got, old, new, strict=True))
            drop_caches()
        assert (mnt / "dir" / "file").read_bytes() == old
        os.unlink(mnt / "filler")  # room for the next mount's journal
    with mounted(mnt, diff, plain=base):
        assert (mnt / "dir" / "file").read_bytes() == old
