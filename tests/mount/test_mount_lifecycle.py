"""`pbkfs mount` / `pbkfs unmount` around the file system: bindings, locks, refusals,
signals, corrupt backups, --local-wal. Each refusal must name what is wrong."""

from __future__ import annotations

import errno
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from tests.support.catalog_edit import copy_catalog, first_stored_datafile
from tests.support.mounting import is_mounted, kill9_mount, mount_pids, mounted, pbkfs


def test_refusals_name_the_problem(work: Path, base: Path, fixtures_dir: Path) -> None:
    catalog = fixtures_dir / "pg15" / "catalog"
    mnt = work / "mnt"
    mnt.mkdir()
    diff = work / "diff"
    cases = [
        (["-B", str(catalog), "--instance", "main", "-i", "NOSUCH"], "NOSUCH"),
        (["-B", str(catalog), "--instance", "nosuch", "-i", "TP2KB6"], "nosuch"),
        (["-B", str(work / "nostore"), "--instance", "main", "-i", "TP2KB6"], "nostore"),
        (["--plain-base", str(base), "--workers", "0"], "--workers 0"),
        (["--plain-base", str(base), "--owner", "no-such-user-x"], "no-such-user-x"),
    ]
    for args, needle in cases:
        proc = pbkfs("mount", "-D", str(mnt), "-d", str(diff), *args, check=False)
        assert proc.returncode != 0, args
        assert needle in proc.stderr, (args, proc.stderr)
        assert not is_mounted(mnt)
    assert not diff.exists(), "a refused mount must not create the diff"
    (mnt / "junk").write_text("x")
    proc = pbkfs("mount", "-D", str(mnt), "-d", str(diff), "--plain-base", str(base),
                 check=False)
    assert proc.returncode != 0 and "not empty" in proc.stderr
    proc = pbkfs("mount", "-D", str(work / "missing"), "-d", str(diff), "--plain-base",
                 str(base), check=False)
    assert proc.returncode != 0 and "does not exist" in proc.stderr


def test_binding_lock_and_resume(work: Path, base: Path, fixtures_dir: Path) -> None:
    """Lesson 37: one live mount per diff (flock); a diff bound elsewhere is refused."""
    mnt, mnt2, diff = work / "mnt", work / "mnt2", work / "diff"
    mnt2.mkdir()
    with mounted(mnt, diff, plain=base):
        (mnt / "dir" / "new").write_bytes(b"kept")
        assert stat.S_IMODE(diff.stat().st_mode) == 0o700
        proc = pbkfs("mount", "-D", str(mnt2), "-d", str(diff), "--plain-base", str(base),
                     check=False)
        assert proc.returncode != 0 and "in use" in proc.stderr and str(os.getpid()) not in ""
        assert "pid" in proc.stderr and str(mnt) in proc.stderr
    other = work / "other"
    other.mkdir()
    proc = pbkfs("mount", "-D", str(mnt2), "-d", str(diff), "--plain-base", str(other),
                 check=False)
    assert proc.returncode != 0 and "bound to" in proc.stderr
    proc = pbkfs("mount", "-D", str(mnt2), "-d", str(diff), "-B",
                 str(fixtures_dir / "pg15" / "catalog"), "--instance", "main", "-i", "TP2KB6",
                 check=False)
    assert proc.returncode != 0 and "bound to" in proc.stderr
    with mounted(mnt2, diff, plain=base):  # resumes exactly where it stopped
        assert (mnt2 / "dir" / "new").read_bytes() == b"kept"
    # nothing pbkfs keeps for itself is inside the mount
    assert sorted(os.listdir(base)) == ["dir"]


def test_unmount_busy_not_mounted_and_dead(work: Path, base: Path) -> None:
    """Lesson 18: busy, not mounted and a dead endpoint are told apart."""
    mnt, diff = work / "mnt", work / "diff"
    proc = pbkfs("unmount", "-D", str(mnt), check=False)
    assert proc.returncode != 0 and "not mounted" in proc.stderr
    with mounted(mnt, diff, plain=base):
        fd = os.open(mnt / "dir" / "file", os.O_RDONLY)
        try:
            proc = pbkfs("unmount", "-D", str(mnt), check=False)
            assert proc.returncode != 0 and "busy" in proc.stderr
            assert is_mounted(mnt)
            assert os.pread(fd, 7, 0) == b"content"
        finally:
            os.close(fd)
        kill9_mount(diff)
        with pytest.raises(OSError) as e:
            (mnt / "dir" / "created-after-death").write_bytes(b"x")  # cached stat would work
        # ENOTCONN once the connection is gone; ECONNABORTED if the request was queued
        # in the moment the kernel aborted it
        assert e.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    assert not is_mounted(mnt)  # unmount cleared the dead endpoint


def test_sigterm_never_detaches_a_busy_mount(work: Path, base: Path) -> None:
    """Lesson 17: SIGTERM unmounts only when nothing is open; busy -> keeps serving."""
    mnt, diff = work / "mnt", work / "diff"
    with mounted(mnt, diff, plain=base):
        frontend = mount_pids(diff)[0]
        fd = os.open(mnt / "dir" / "file", os.O_RDONLY)
        try:
            os.kill(frontend, signal.SIGTERM)
            time.sleep(1.0)  # give it the chance to do the wrong thing
            assert is_mounted(mnt)
            assert os.pread(fd, 7, 8) == b"content"
        finally:
            os.close(fd)
        os.kill(frontend, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while is_mounted(mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not is_mounted(mnt)


def test_corrupt_backup_page_gives_eio_not_wrong_bytes(work: Path, fixtures_dir: Path) -> None:
    """Lesson 38: a damaged stored page is never served: EIO, a log line naming it."""
    catalog = copy_catalog(fixtures_dir / "pg15" / "catalog", work / "catalog")
    bdir = catalog / "backups" / "main" / "TP2KB6"  # FULL, no compression: 8 + 8192 per page
    path, fields = first_stored_datafile(bdir, min_headers=3)
    stored = bdir / "database" / path
    data = bytearray(stored.read_bytes())
    data[8200 + 8 + 4000] ^= 0x5A  # inside block 1
    stored.write_bytes(bytes(data))
    mnt, diff = work / "mnt", work / "diff"
    with mounted(mnt, diff, store=catalog, instance="main", backup_id="TP2KB6"):
        fd = os.open(mnt / path, os.O_RDONLY)
        try:
            assert len(os.pread(fd, 8192, 0)) == 8192  # block 0 is fine
            with pytest.raises(OSError) as e:
                os.pread(fd, 8192, 8192)
            assert e.value.errno == errno.EIO
            assert len(os.pread(fd, 8192, 2 * 8192)) == 8192
        finally:
            os.close(fd)
    log = (diff / "pbkfs.log").read_text()
    assert path in log and "block 1" in log


def test_read_only_fd_sees_later_writes(work: Path, base: Path) -> None:
    """Lesson 29: every handle of an inode sees its current content."""
    mnt, diff = work / "mnt", work / "diff"
    with mounted(mnt, diff, plain=base):
        ro = os.open(mnt / "dir" / "file", os.O_RDONLY)
        try:
            assert os.pread(ro, 7, 0) == b"content"
            with open(mnt / "dir" / "file", "r+b") as f:
                f.write(b"CHANGED")
            assert os.pread(ro, 7, 0) == b"CHANGED"
        finally:
            os.close(ro)
