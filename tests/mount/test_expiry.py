"""--idle-timeout and --ttl end a mount by themselves (and --remove-diff its diff); a busy
mount (a file open, as PostgreSQL keeps them) is not stopped unless mounted with --force."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pbkfs.errors import UsageError
from pbkfs.mount.expiry import parse_duration
from tests.support.mounting import force_unmount, is_mounted, mount, pbkfs

pytestmark = pytest.mark.mount


def wait_unmounted(mnt: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not is_mounted(mnt):
            return True
        time.sleep(0.1)
    return False


def test_durations() -> None:
    assert parse_duration("90", "--ttl") == 90 and parse_duration("15m", "--ttl") == 900
    assert parse_duration("2h", "--ttl") == 7200 and parse_duration("1d", "--ttl") == 86400
    assert parse_duration("1.5s", "--ttl") == 1.5
    for bad in ("", "0", "-5", "10x", "m"):
        with pytest.raises(UsageError, match="--ttl"):
            parse_duration(bad, "--ttl")


def test_idle_timeout_unmounts_an_idle_mount(base: Path, work: Path) -> None:
    mnt, diff = work / "mnt", work / "diff"
    mnt.mkdir()
    try:
        mount(mnt, diff, plain=base, extra=("--idle-timeout", "2s"))
        for _ in range(6):  # activity keeps it mounted
            (mnt / "f").write_bytes(b"x")
            time.sleep(0.5)
        assert is_mounted(mnt)
        assert wait_unmounted(mnt, 30)
        deadline = time.monotonic() + 30  # the mount process finishes after the kernel let go
        while "unmounted" not in (log := (diff / "pbkfs.log").read_text()):
            assert time.monotonic() < deadline, log[-2000:]
            time.sleep(0.1)
        assert "expiry: it was idle for 2 s (--idle-timeout): unmounting" in log
    finally:
        force_unmount(mnt, diff)


def test_ttl_refuses_a_busy_mount_without_force(base: Path, work: Path) -> None:
    mnt, diff = work / "mnt", work / "diff"
    mnt.mkdir()
    try:
        mount(mnt, diff, plain=base, extra=("--ttl", "1s"))
        with open(mnt / "held", "wb") as held:  # an open file, as PostgreSQL's
            held.write(b"y")
            time.sleep(3)
            assert is_mounted(mnt)
            log = (diff / "pbkfs.log").read_text()
            assert "its --ttl of 1 s has passed, but 1 files are open" in log
        assert wait_unmounted(mnt, 30)  # once closed, the ttl takes it
    finally:
        force_unmount(mnt, diff)


def test_ttl_with_force_stops_a_busy_mount_and_removes_the_diff(base: Path,
                                                               work: Path) -> None:
    mnt, diff = work / "mnt", work / "diff"
    mnt.mkdir()
    try:
        mount(mnt, diff, plain=base, extra=("--ttl", "1s", "--force", "--remove-diff"))
        held = open(mnt / "held", "wb")  # noqa: SIM115 - kept open across the expiry
        try:
            assert wait_unmounted(mnt, 30)
        finally:
            held.close()
        deadline = time.monotonic() + 30
        while diff.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not diff.exists()
    finally:
        force_unmount(mnt, diff)


def test_remove_diff_needs_an_expiry(base: Path, work: Path) -> None:
    proc = pbkfs("mount", "-D", str(work / "mnt"), "-d", str(work / "diff"), "--plain-base",
                 str(base), "--remove-diff", check=False)
    assert proc.returncode != 0 and "--remove-diff needs --idle-timeout or --ttl" in proc.stderr
