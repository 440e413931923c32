"""Security properties of a mount: the backup is never written, hostile catalog entries are
refused, pbkfs's own state is private, and nobody else enters a mount without allow_other."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbkfs.errors import PbkfsError
from pbkfs.view import open_view
from tests.catalog_edit import rewrite_content
from tests.conftest import REPO
from tests.mounting import (
    MOUNT_TIMEOUT,
    force_unmount,
    is_mounted,
    mount_pids,
    mounted,
    pbkfs,
    require_fuse,
    unmount,
)
from tests.support.postgres import (
    PG_USER,
    PgCluster,
    free_port,
    make_owned_dir,
    pg_workdir,
    require_postgres,
)

pytestmark = pytest.mark.mount


@pytest.fixture
def work() -> Iterator[Path]:
    with pg_workdir("pbkfs-sec-") as w:
        yield w


def tree_state(root: Path) -> list[tuple[str, int, int, int]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out.append((os.path.relpath(p, root), st.st_size, st.st_mtime_ns, st.st_mode))
    return sorted(out)


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


LINK_LINE = ('{{"path":"{path}", "size":"0", "mode":"41471", "is_datafile":"0", "is_cfs":"0", '
             '"crc":"0", "compress_alg":"none", "external_dir_num":"0", "dbOid":"0", '
             '"linked":"{target}"}}')


def store_with_entry(fixtures_dir: Path, dest: Path, line: str) -> Path:
    """A private copy of instance nochk whose FULL backup TP2KCQ also lists `line`."""
    (dest / "backups").mkdir(parents=True)
    (dest / "wal" / "nochk").mkdir(parents=True)
    shutil.copytree(fixtures_dir / "pg15" / "catalog" / "backups" / "nochk",
                    dest / "backups" / "nochk")

    def add(lines: list[str]) -> list[str]:
        body = [x for x in lines if x.strip()]
        return [*body, line, ""]

    rewrite_content(dest / "backups" / "nochk" / "TP2KCQ", add)
    return dest


LEAVING = [
    ("evil", "/etc"),
    ("evil", "../../../../etc"),
    ("base/evil", "../../outside"),
]


@pytest.mark.parametrize(("path", "target"), LEAVING, ids=[f"{p}->{t}" for p, t in LEAVING])
def test_link_target_leaving_the_data_directory_is_corrupt(
    work: Path, fixtures_dir: Path, path: str, target: str
) -> None:
    """A listed symlink (`linked`) pointing outside the data directory would let writes
    through the mount land anywhere on the host: the reader refuses the backup."""
    store = store_with_entry(fixtures_dir, work / "store",
                             LINK_LINE.format(path=path, target=target))
    with pytest.raises(PbkfsError) as exc:
        view = open_view(store, "nochk", "TP2KCQ")
        view.close()
    assert path in str(exc.value)


def test_link_target_inside_the_data_directory_is_a_symlink(
    work: Path, fixtures_dir: Path
) -> None:
    """Control for the test above: the same entry with a target inside is served."""
    store = store_with_entry(fixtures_dir, work / "store",
                             LINK_LINE.format(path="base/good", target="../global"))
    view = open_view(store, "nochk", "TP2KCQ")
    try:
        e = view.entry("base/good")
        assert e is not None and e.kind == "l" and e.target == "../global"
    finally:
        view.close()


@pytest.mark.parametrize("path", ["../escape", "/abs", "base/../../escape", "base/./x"])
def test_entry_path_escaping_is_corrupt(work: Path, fixtures_dir: Path, path: str) -> None:
    line = LINK_LINE.format(path=path, target="x").replace(', "linked":"x"', "")
    line = line.replace('"mode":"41471"', '"mode":"33152"')
    store = store_with_entry(fixtures_dir, work / "store", line)
    with pytest.raises(PbkfsError) as exc:
        open_view(store, "nochk", "TP2KCQ").close()
    assert path in str(exc.value)


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
