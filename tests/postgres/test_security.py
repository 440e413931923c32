"""Security properties of a mount with PostgreSQL: the backup is never written (PostgreSQL
recovers and writes on a mount of a read-only store), and nobody else, not even the
`postgres` OS user, enters a mount without allow_other."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mounting import (
    is_mounted,
    mount_pids,
    mounted,
    require_fuse,
)
from tests.support.postgres import PG_USER, PgCluster, free_port, make_owned_dir, require_postgres
from tests.support.trees import tree_state

pytestmark = pytest.mark.mount


@contextlib.contextmanager
def read_only_bind(src: Path, dest: Path) -> Iterator[Path]:
    """`dest` shows `src` read-only (a bind mount remounted ro): any write gets EROFS."""
    dest.mkdir()
    subprocess.run(["mount", "--bind", str(src), str(dest)], check=True, timeout=60)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(dest)], check=True, timeout=60)
        yield dest
    finally:
        if subprocess.run(["umount", str(dest)], capture_output=True, timeout=60).returncode:
            subprocess.run(["umount", "-l", str(dest)], capture_output=True, timeout=60)


def fds_into(pids: list[int], root: Path) -> tuple[list[str], list[str]]:
    """Descriptors of `pids` open on files under `root`: (read-only, with write access)."""
    bad: list[str] = []
    good: list[str] = []
    prefix = os.path.abspath(root) + "/"
    for pid in pids:
        fddir = f"/proc/{pid}/fd"
        with contextlib.suppress(FileNotFoundError):
            for fd in os.listdir(fddir):
                try:
                    target = os.readlink(f"{fddir}/{fd}")
                    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                        flags = int(next(line for line in f if line.startswith("flags:"))
                                    .split()[1], 8)
                except (FileNotFoundError, StopIteration):
                    continue
                if not target.startswith(prefix):
                    continue
                what = f"pid {pid} fd {fd} -> {target} (flags {flags:o})"
                (good if flags & os.O_ACCMODE == os.O_RDONLY else bad).append(what)
    return good, bad


def test_postgresql_writes_on_a_read_only_store(work: Path, fixtures_dir: Path) -> None:
    """The store is a read-only bind mount; PostgreSQL recovers and writes on the mount,
    every pbkfs process holds store files read-only, and the store is unchanged."""
    require_fuse()
    require_postgres()
    catalog = fixtures_dir / "pg15" / "catalog"
    before = tree_state(catalog)
    mnt = make_owned_dir(work / "mnt", 0o700)
    diff = work / "diff"
    with read_only_bind(catalog, work / "ro-store") as store:
        with pytest.raises(OSError):  # the bind really is read-only, even for root
            (store / "probe").write_text("x")
        with mounted(mnt, diff, store=store, instance="nochk", backup_id="TP2KD0"):
            with PgCluster(mnt, free_port(), work / "sock") as pg:
                pg.start()
                pg.psql("CREATE TABLE sec AS SELECT g, md5(g::text) AS h "
                        "FROM generate_series(1, 20000) g")
                pg.psql("UPDATE sec SET h = 'x' WHERE g % 7 = 0")
                pg.psql("DELETE FROM sec WHERE g % 11 = 0")
                pg.psql("VACUUM sec")
                pg.psql("CHECKPOINT")
                assert pg.psql("SELECT count(*) FROM sec") == str(20000 - 20000 // 11)
                reading, writing = fds_into(mount_pids(diff), store)
                assert writing == []
                assert reading, "no store file open at all: the check above saw nothing"
                pg.stop()
        assert not is_mounted(mnt)
        log = (diff / "pbkfs.log").read_text(errors="replace")
        assert "Read-only file system" not in log and "EROFS" not in log
    assert tree_state(catalog) == before


def test_without_allow_other_nobody_else_enters(work: Path) -> None:
    """Owner == mounting user (root): no allow_other, so even stat by postgres is refused."""
    require_fuse()
    require_postgres()
    base = work / "base"
    (base / "dir").mkdir(parents=True)
    (base / "dir" / "file").write_text("secret\n")
    os.chmod(base / "dir" / "file", 0o644)
    mnt, diff = work / "mnt", work / "diff"
    with mounted(mnt, diff, plain=base):
        with open("/proc/self/mountinfo") as f:
            line = next(x for x in f if x.split()[4] == str(mnt))
        assert "allow_other" not in line
        assert (mnt / "dir" / "file").read_text() == "secret\n"  # root, the owner, can
        for cmd in (["stat", str(mnt)], ["ls", str(mnt)], ["cat", str(mnt / "dir" / "file")]):
            proc = subprocess.run(["runuser", "-u", PG_USER, "--", *cmd], capture_output=True,
                                  text=True, timeout=60, check=False)
            assert proc.returncode != 0, cmd
            assert "Permission denied" in proc.stderr, proc.stderr
