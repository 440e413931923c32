"""Every bad input to `pbkfs mount`: a clear message, a non-zero exit, nothing changed.

Each case prepares its situation, runs `pbkfs mount` the way a user would
(in the background mode, through the launcher), and then requires: exit
status != 0; one `pbkfs: error: ...` line naming what is wrong (no traceback);
the store's tree (names, sizes, mtimes) unchanged; the diff directory
unchanged (or still absent); no new mount at the mount point.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.catalog_edit import set_control
from tests.support.env import REPO
from tests.support.mounting import (
    MOUNT_TIMEOUT,
    force_unmount,
    kill9_mount,
    mount,
    pbkfs,
    unmount,
)
from tests.support.pbkfs_program import server_python
from tests.support.postgres import PG_USER, make_owned_dir, pg_workdir, require_postgres
from tests.support.trees import Entry, tree_state


@dataclass
class Ctx:
    """What a case works with; `cleanups` run after the case, last first."""

    work: Path
    catalog: Path  # the shared fixture catalog (read, never changed)
    mnt: Path
    diff: Path
    base: Path  # a small plain directory, for mounts that only need to exist
    store: Path | None = None  # a private small catalog when a case damages one
    runner: list[str] = field(default_factory=list)  # prefix of the command line
    env: dict[str, str] | None = None
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def small_store(self) -> Path:
        """A private copy of the `nochk` instance (FULL TP2KCQ <- DELTA TP2KD0)."""
        dest = self.work / "store"
        (dest / "backups").mkdir(parents=True)
        (dest / "wal" / "nochk").mkdir(parents=True)
        shutil.copytree(self.catalog / "backups" / "nochk", dest / "backups" / "nochk")
        self.store = dest
        return dest

    def mount_plain(self, mnt: Path, diff: Path) -> None:
        mnt.mkdir(exist_ok=True)
        mount(mnt, diff, plain=self.base)
        self.cleanups.append(lambda: _unmount_quietly(mnt, diff))


def _unmount_quietly(mnt: Path, diff: Path) -> None:
    try:
        unmount(mnt, diff)
    except Exception:
        force_unmount(mnt, diff)


def catalog_args(store: Path, instance: str, backup_id: str) -> list[str]:
    return ["-B", str(store), "--instance", instance, "-i", backup_id]


def main_args(c: Ctx) -> list[str]:
    return catalog_args(c.catalog, "main", "TP2KB6")


# -- the cases: (prepare the situation) -> extra arguments of `pbkfs mount` ------------------

def store_missing(c: Ctx) -> list[str]:
    return catalog_args(c.work / "nostore", "main", "TP2KB6")


def store_unreadable(c: Ctx) -> list[str]:
    """As `postgres`, the store sits under a directory it cannot enter (root could)."""
    require_postgres()
    python = server_python()
    assert python is not None, "no Python the postgres user can run"
    locked = c.work / "locked"
    locked.mkdir(mode=0o000)
    locked.chmod(0o000)
    (locked / "catalog").symlink_to(c.catalog)
    c.cleanups.append(lambda: locked.chmod(0o755))
    make_owned_dir(c.mnt, 0o700)
    make_owned_dir(c.work / "pgdiffs", 0o700)
    c.diff = c.work / "pgdiffs" / "diff"
    paths = f"{REPO}:{sysconfig.get_paths()['purelib']}"
    c.runner = ["runuser", "-u", PG_USER, "--", "env", f"PYTHONPATH={paths}", python]
    return catalog_args(locked / "catalog", "main", "TP2KB6")


def unknown_instance(c: Ctx) -> list[str]:
    return catalog_args(c.catalog, "nosuch", "TP2KB6")


def unknown_backup(c: Ctx) -> list[str]:
    return catalog_args(c.catalog, "main", "NOSUCH")


def backup_not_ok(c: Ctx) -> list[str]:
    store = c.small_store()
    set_control(store / "backups" / "nochk" / "TP2KD0", "status", "ERROR")
    return catalog_args(store, "nochk", "TP2KD0")


def parent_not_ok(c: Ctx) -> list[str]:
    store = c.small_store()
    set_control(store / "backups" / "nochk" / "TP2KCQ", "status", "CORRUPT")
    return catalog_args(store, "nochk", "TP2KD0")


def broken_chain(c: Ctx) -> list[str]:
    store = c.small_store()
    shutil.rmtree(store / "backups" / "nochk" / "TP2KCQ")  # the DELTA's parent is gone
    return catalog_args(store, "nochk", "TP2KD0")


def missing_backup_id(c: Ctx) -> list[str]:
    return ["-B", str(c.catalog), "--instance", "main"]


def mountpoint_missing(c: Ctx) -> list[str]:
    c.mnt = c.work / "no-such-mountpoint"
    return main_args(c)


def mountpoint_not_empty(c: Ctx) -> list[str]:
    (c.mnt / "stray-file").write_text("x")
    return main_args(c)


def mountpoint_is_a_file(c: Ctx) -> list[str]:
    c.mnt = c.work / "a-file"
    c.mnt.write_text("x")
    return main_args(c)


def already_mounted(c: Ctx) -> list[str]:
    c.mount_plain(c.mnt, c.work / "other-diff")
    return main_args(c)


def diff_bound_to_another_backup(c: Ctx) -> list[str]:
    store = c.small_store()
    c.mnt.rmdir()
    with_mount = c.work / "first"
    with_mount.mkdir()
    mount(with_mount, c.diff, store=store, instance="nochk", backup_id="TP2KCQ")
    unmount(with_mount, c.diff)
    c.mnt.mkdir()
    return catalog_args(store, "nochk", "TP2KD0")


def diff_in_use(c: Ctx) -> list[str]:
    c.mount_plain(c.work / "first", c.diff)
    # the live mount logs "mounted" just after its command returned (after the kernel
    # tuning): its own write, not the refused mount's
    deadline = time.monotonic() + 30
    while "mounted " not in (c.diff / "pbkfs.log").read_text():
        assert time.monotonic() < deadline, "the first mount never logged that it mounted"
        time.sleep(0.05)
    return ["--plain-base", str(c.base)]


def diff_dirty(c: Ctx) -> list[str]:
    """A --perf-unsafe mount that died leaves the dirty marker: refused without --force."""
    first = c.work / "first"
    first.mkdir()
    try:
        mount(first, c.diff, plain=c.base, extra=["--perf-unsafe"])
    finally:
        kill9_mount(c.diff)
        force_unmount(first, c.diff)
    return ["--plain-base", str(c.base)]


def diff_non_resumable(c: Ctx) -> list[str]:
    """A diff made with --no-wal lost its WAL: never mounted again."""
    first = c.work / "first"
    first.mkdir()
    mount(first, c.diff, plain=c.base, extra=["--no-wal"])
    unmount(first, c.diff)
    return ["--plain-base", str(c.base)]


def diff_is_a_file(c: Ctx) -> list[str]:
    c.diff.write_text("not a directory")
    return main_args(c)


def diff_inside_mountpoint(c: Ctx) -> list[str]:
    c.diff = c.mnt / "diff"
    return main_args(c)


UNSHARE_DEV = r"""
set -e
old="$1"; shift
mount --bind /dev "$old"
mount -t tmpfs -o mode=755 pbkfs-test-dev /dev
for n in null zero random urandom; do
    touch "/dev/$n"; mount --bind "$old/$n" "/dev/$n"
done
mkdir /dev/shm; mount --bind "$old/shm" /dev/shm
ln -s /proc/self/fd /dev/fd
exec "$@"
"""

UNSHARE_NULL_FUSE = r"""
set -e
mount --bind /dev/null /dev/fuse
exec "$@"
"""


def dev_fuse_missing(c: Ctx) -> list[str]:
    """In a private mount namespace, /dev is a tmpfs holding everything but fuse."""
    old = c.work / "olddev"
    old.mkdir()
    c.runner = ["unshare", "--mount", "--propagation", "private", "sh", "-c", UNSHARE_DEV,
                "sh", str(old), sys.executable]
    return main_args(c)


def dev_fuse_not_fuse(c: Ctx) -> list[str]:
    """/dev/fuse exists but is not the FUSE device (/dev/null bound over it)."""
    c.runner = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                UNSHARE_NULL_FUSE, "sh", sys.executable]
    return main_args(c)


def fusermount_absent(c: Ctx) -> list[str]:
    empty = c.work / "empty-path"
    empty.mkdir()
    c.env = {**os.environ, "PATH": str(empty)}
    return main_args(c)


def unknown_owner(c: Ctx) -> list[str]:
    return [*main_args(c), "--owner", "no-such-user-x"]


def unknown_group(c: Ctx) -> list[str]:
    return [*main_args(c), "--owner", "root:no-such-group-x"]


def workers_zero(c: Ctx) -> list[str]:
    return [*main_args(c), "--workers", "0"]


def workers_negative(c: Ctx) -> list[str]:
    return [*main_args(c), "--workers", "-3"]


# (case, words the message must contain; "{mnt}"/"{diff}"/"{store}" are filled in)
CASES: list[tuple[Callable[[Ctx], list[str]], list[str]]] = [
    (store_missing, ["nostore"]),
    (store_unreadable, ["catalog", "ermission denied"]),
    (unknown_instance, ["nosuch"]),
    (unknown_backup, ["NOSUCH"]),
    (backup_not_ok, ["TP2KD0", "ERROR"]),
    (parent_not_ok, ["TP2KCQ", "CORRUPT"]),
    (broken_chain, ["TP2KCQ"]),
    (missing_backup_id, ["-i/--backup-id"]),
    (mountpoint_missing, ["{mnt}", "does not exist"]),
    (mountpoint_not_empty, ["{mnt}", "not empty"]),
    (mountpoint_is_a_file, ["{mnt}", "not a directory"]),
    (already_mounted, ["{mnt}", "already"]),
    (diff_bound_to_another_backup, ["{diff}", "bound to", "TP2KCQ"]),
    (diff_in_use, ["{diff}", "in use", "pid", "first"]),
    (diff_dirty, ["{diff}", "--force"]),
    (diff_non_resumable, ["{diff}", "--no-wal"]),
    (diff_is_a_file, ["{diff}", "not a directory"]),
    (diff_inside_mountpoint, ["diff directory", "inside the mount point"]),
    (dev_fuse_missing, ["/dev/fuse"]),
    (dev_fuse_not_fuse, ["/dev/fuse"]),
    (fusermount_absent, ["fusermount3"]),
    (unknown_owner, ["no-such-user-x"]),
    (unknown_group, ["no-such-group-x"]),
    (workers_zero, ["--workers 0"]),
    (workers_negative, ["--workers -3"]),
]
XFAIL: dict[str, str] = {}  # case name -> why it is expected to fail


NEEDS_POSTGRES = {"store_unreadable"}  # runs `pbkfs mount` as the postgres OS user


def params() -> list[object]:
    out: list[object] = []
    for case, needles in CASES:
        marks: list[pytest.MarkDecorator] = []
        if case.__name__ in NEEDS_POSTGRES:
            marks.append(pytest.mark.postgres)
        if case.__name__ in XFAIL:
            marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[case.__name__]))
        out.append(pytest.param(case, needles, id=case.__name__, marks=marks))
    return out


def diff_state(diff: Path) -> list[Entry] | None:
    """tree_state of a diff; the lock file by size only (a mount may touch it, but a refused
    mount must not leave its pid and mount point in it)."""
    state = tree_state(diff)
    if state is None:
        return None
    return [(n, size, 0 if n == "lock" else mtime, mode) for n, size, mtime, mode in state]


def mounts_at(path: Path) -> int:
    want = os.path.abspath(path)
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if line.split()[4] == want)


@pytest.fixture
def ctx(fixtures_dir: Path) -> Iterator[Ctx]:
    with pg_workdir("pbkfs-bad-") as work:
        base = work / "base"
        (base / "dir").mkdir(parents=True)
        (base / "dir" / "file").write_text("content\n")
        mnt = work / "mnt"
        mnt.mkdir()
        c = Ctx(work, fixtures_dir / "pg15" / "catalog", mnt, work / "diff", base)
        try:
            yield c
        finally:
            for fn in reversed(c.cleanups):
                with contextlib.suppress(Exception):
                    fn()


@pytest.mark.parametrize(("case", "needles"), params())
def test_bad_input(ctx: Ctx, case: Callable[[Ctx], list[str]], needles: list[str]) -> None:
    args = case(ctx)
    store = ctx.store or ctx.catalog
    before = (tree_state(store), diff_state(ctx.diff), mounts_at(ctx.mnt))
    cmd = ["mount", "-D", str(ctx.mnt), "-d", str(ctx.diff), *args]
    if ctx.runner or ctx.env is not None:
        proc = subprocess.run([*(ctx.runner or [sys.executable]), "-m", "pbkfs.cli.entry", *cmd],
                              capture_output=True, text=True, timeout=MOUNT_TIMEOUT,
                              cwd="/tmp" if ctx.runner else REPO, env=ctx.env, check=False)
    else:
        proc = pbkfs(*cmd, check=False)
    err = proc.stderr
    print(f"{case.__name__}: exit {proc.returncode}: {err.strip()}")  # shown with -rA
    try:
        assert proc.returncode != 0, f"exit 0 for a bad input:\n{proc.stdout}\n{err}"
        assert "Traceback" not in err, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines and lines[-1].startswith(("pbkfs: error:", "Error:")), err
        for needle in needles:
            word = needle.format(mnt=ctx.mnt, diff=ctx.diff, store=store)
            assert word in err, f"message does not name {word!r}: {err}"
        after = (tree_state(store), diff_state(ctx.diff), mounts_at(ctx.mnt))
        assert after[0] == before[0], "the store changed"
        assert after[1] == before[1], "the diff directory changed"
        assert after[2] == before[2], "something was mounted"
    finally:
        if mounts_at(ctx.mnt) > before[2]:
            force_unmount(ctx.mnt, ctx.diff)
