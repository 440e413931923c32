"""Security properties of a mount: links leaving the data directory are never served, and
pbkfs's own state is private (with PostgreSQL: tests/postgres/test_security.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.catalog_edit import LEAVING, LINK_LINE, store_with_entry
from tests.support.env import REPO
from tests.support.mounting import (
    MOUNT_TIMEOUT,
    force_unmount,
    is_mounted,
    pbkfs,
    require_fuse,
    unmount,
)

# Old pg_probackup versions listed pg_tblspc/<oid> with `linked` = the tablespace's absolute
# location: not corrupt, but a mount must not hand PostgreSQL a symlink to the host's directory.
MOUNT_LEAVING = [*LEAVING, ("pg_tblspc/99999", "/var/lib")]


@pytest.mark.parametrize(("path", "target"), MOUNT_LEAVING,
                         ids=[f"{p}->{t}" for p, t in MOUNT_LEAVING])
def test_mount_never_serves_a_link_leaving_the_data_directory(
    work: Path, fixtures_dir: Path, path: str, target: str
) -> None:
    """Refused with a message naming the entry, or (tablespaces) served as something that
    stays inside the mount."""
    require_fuse()
    store = store_with_entry(fixtures_dir, work / "store",
                             LINK_LINE.format(path=path, target=target))
    mnt, diff = work / "mnt", work / "diff"
    mnt.mkdir()
    try:
        proc = pbkfs("mount", "-D", str(mnt), "-d", str(diff), "-B", str(store), "--instance",
                     "nochk", "-i", "TP2KCQ", check=False)
        if proc.returncode != 0:
            assert path in proc.stderr, proc.stderr
            return
        assert path.startswith("pg_tblspc/"), f"mounted a backup with {path} -> {target}"
        shown = mnt / path
        if shown.is_symlink():
            resolved = os.path.realpath(shown)
            assert resolved == str(mnt) or resolved.startswith(f"{mnt}/"), resolved
    finally:
        if is_mounted(mnt):
            unmount(mnt, diff)


def test_diff_directory_is_private_whatever_the_umask(work: Path) -> None:
    """Created 0700 (and its files 0600) even under umask 000."""
    require_fuse()
    base = work / "base"
    (base / "dir").mkdir(parents=True)
    (base / "dir" / "file").write_bytes(b"x" * 10000)
    mnt, diff = work / "mnt", work / "diff"
    mnt.mkdir()
    cmd = (f"umask 000 && exec {sys.executable} -m "
           f"pbkfs.cli.main mount -D {mnt} -d {diff} --plain-base {base} --workers 1")
    try:
        proc = subprocess.run(["sh", "-c", cmd], cwd=REPO, capture_output=True, text=True,
                              timeout=MOUNT_TIMEOUT, check=False)
        assert proc.returncode == 0, proc.stderr
        with open(mnt / "dir" / "file", "r+b") as f:
            f.write(b"y" * 100)
            f.flush()
            os.fsync(f.fileno())
        with open(mnt / "new", "wb") as f:
            f.write(b"new")
            os.fsync(f.fileno())
        pbkfs("unmount", "-D", str(mnt))
    finally:
        if is_mounted(mnt):
            force_unmount(mnt, diff)
    assert stat.S_IMODE(diff.stat().st_mode) == 0o700
    seen = 0
    for dirpath, dirnames, filenames in os.walk(diff):
        for name in dirnames:
            assert stat.S_IMODE(os.lstat(os.path.join(dirpath, name)).st_mode) == 0o700, name
        for name in filenames:
            mode = stat.S_IMODE(os.lstat(os.path.join(dirpath, name)).st_mode)
            assert mode & 0o077 == 0, f"{dirpath}/{name} is {mode:o}"
            seen += 1
    assert seen >= 4  # binding, lock, journal/snapshot, objects
