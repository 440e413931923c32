"""`pbkfs cleanup -d DIFF [--force]` on diffs no mount holds: wipes a diff, never one in use,
never outside it (with live and killed mounts: tests/mount/test_cleanup.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from pbkfs.diff.directory import LockInfo
from tests.support.mounting import cleanup
from tests.support.trees import names_and_sizes


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True, timeout=60)
    return int(proc.stdout)


def fake_diff(diff: Path, lock: LockInfo | None = None, binding: bool = True) -> None:
    """A diff directory as a mount leaves it (contents beside the point)."""
    (diff / "ns").mkdir(parents=True, mode=0o700)
    (diff / "objects").mkdir(mode=0o700)
    (diff / "objects" / "1").write_bytes(b"x" * 100)
    (diff / "ns" / "journal.0").write_bytes(b"")
    if binding:
        (diff / "binding.json").write_bytes(
            b'{"source":{"kind":"plain","path":"/nowhere"},"chain":[],'
            b'"created_at":"2026-01-01T00:00:00+0000","base_time_ns":1}')
    (diff / "lock").write_bytes(msgspec.json.encode(lock) if lock else b"")


def test_stale_lock_on_this_host_needs_no_force(work: Path) -> None:
    diff = work / "diff"
    pid = dead_pid()
    fake_diff(diff, LockInfo(pid, socket.gethostname(), "/somewhere", "then"))
    proc = cleanup(diff)
    assert proc.returncode == 0, proc.stderr
    assert f"stale lock of pid {pid}" in proc.stdout
    assert os.listdir(diff) == []


def test_lock_from_another_host_needs_force(work: Path) -> None:
    diff = work / "diff"
    fake_diff(diff, LockInfo(4242, "other-host.example", "/mnt/x", "then"))
    before = names_and_sizes(diff)
    proc = cleanup(diff)
    assert proc.returncode != 0
    assert "other-host.example" in proc.stderr and "4242" in proc.stderr
    assert "--force" in proc.stderr
    assert names_and_sizes(diff) == before
    proc = cleanup(diff, "--force")
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(diff) == []


@pytest.mark.parametrize("binding", ["missing", "damaged"])
def test_broken_diff_needs_force(work: Path, binding: str) -> None:
    diff = work / "diff"
    fake_diff(diff, binding=False)
    if binding == "damaged":
        (diff / "binding.json").write_bytes(b"{not json")
    before = names_and_sizes(diff)
    proc = cleanup(diff)
    assert proc.returncode != 0
    assert "binding.json" in proc.stderr and "--force" in proc.stderr
    assert names_and_sizes(diff) == before
    proc = cleanup(diff, "--force")
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(diff) == []


def test_not_a_diff_is_refused_even_with_force(work: Path) -> None:
    d = work / "important"
    d.mkdir()
    (d / "thesis.txt").write_text("years of work")
    (d / "objects").mkdir()  # looks a bit like a diff, but is not one
    before = names_and_sizes(d)
    for extra in ((), ("--force",)):
        proc = cleanup(d, *extra)
        assert proc.returncode != 0
        assert "not a pbkfs diff" in proc.stderr and "thesis.txt" in proc.stderr
        assert names_and_sizes(d) == before


def test_empty_and_missing(work: Path) -> None:
    empty = work / "empty"
    empty.mkdir()
    proc = cleanup(empty)
    assert proc.returncode == 0 and "nothing to clean" in proc.stdout
    assert empty.is_dir()
    proc = cleanup(work / "missing")
    assert proc.returncode != 0 and "does not exist" in proc.stderr
    f = work / "file"
    f.write_text("x")
    proc = cleanup(f)
    assert proc.returncode != 0 and "not a directory" in proc.stderr
    assert f.read_text() == "x"


def test_symlinks_are_removed_never_followed(work: Path) -> None:
    outside = work / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "precious").write_text("keep me")
    (outside / "sub" / "also").write_text("keep me too")
    before = names_and_sizes(outside)
    diff = work / "diff"
    fake_diff(diff)
    (diff / "wal").symlink_to(outside)  # a top-level name pbkfs uses, as a symlink
    (diff / "objects" / "2").symlink_to(outside / "precious")
    (diff / "objects" / "sub").symlink_to(outside / "sub")
    (diff / "ns" / "deep").mkdir()
    (diff / "ns" / "deep" / "link").symlink_to(outside)
    proc = cleanup(diff)
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(diff) == []
    assert names_and_sizes(outside) == before
    assert (outside / "precious").read_text() == "keep me"


def test_diff_given_through_a_symlink(work: Path) -> None:
    """The named diff may be a symlink to the directory; what is wiped is inside it."""
    real = work / "real-diff"
    fake_diff(real)
    link = work / "diff-link"
    link.symlink_to(real)
    proc = cleanup(link)
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and real.is_dir() and os.listdir(real) == []
