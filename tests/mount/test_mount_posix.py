"""POSIX semantics through a real FUSE mount of a plain base directory.

Lessons of pbkfs-reference-behaviour.md that show through the kernel are
checked here (sizes, truncate + extend, open after unlink, link, symlink,
fsync/fsyncdir, statfs, fallocate), next to a hypothesis state machine that
runs the same random operations on the mount and on a tmpfs directory and
requires identical results (dropping the kernel's caches and remounting at
random steps; truncates inside and across backup blocks then extends; many
concurrent writers far past any internal limit; FIFOs, sockets and names
that are not UTF-8), and a concurrency test.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.support.mounting import force_unmount, mount, mounted, require_fuse, unmount

BS = 8192
BASE_FILES = {
    "base/1/100": random.Random(1).randbytes(3 * BS),
    "base/1/200": random.Random(2).randbytes(BS + 333),
    "conf": b"setting = 1\n",
    "d/e/deep": random.Random(3).randbytes(20000),
}


def make_base(root: Path) -> None:
    for rel, data in BASE_FILES.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        p.chmod(0o600)
    (root / "emptydir").mkdir()
    (root / "link").symlink_to("base/1")


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    require_fuse()
    make_base(tmp_path / "base")
    with mounted(tmp_path / "mnt", tmp_path / "diff", plain=tmp_path / "base") as m:
        yield m


def test_tree_and_content_equal_the_base(mnt: Path) -> None:
    for rel, data in BASE_FILES.items():
        assert (mnt / rel).read_bytes() == data
        assert stat.S_IMODE((mnt / rel).stat().st_mode) == 0o600
    assert os.readlink(mnt / "link") == "base/1"
    assert sorted(os.listdir(mnt)) == ["base", "conf", "d", "emptydir", "link"]
    assert stat.S_IMODE(mnt.stat().st_mode) == 0o700


def test_sparse_diff_reads_backup_data(mnt: Path) -> None:
    """Lessons 7, 13: after writing one block, the others still read the backup's bytes."""
    p = mnt / "base/1/100"
    with open(p, "r+b") as f:
        f.seek(BS)
        f.write(b"\x01" * BS)
        f.flush()
        os.fsync(f.fileno())
    want = BASE_FILES["base/1/100"][:BS] + b"\x01" * BS + BASE_FILES["base/1/100"][2 * BS :]
    assert p.read_bytes() == want


def test_size_after_extending_write(mnt: Path) -> None:
    """Lessons 8, 14, 22: stat right after an extending (zero-page) write shows the new size."""
    p = mnt / "base/1/200"
    fd = os.open(p, os.O_RDWR)
    try:
        os.pwrite(fd, bytes(BS), 4 * BS)
        assert os.fstat(fd).st_size == 5 * BS
        assert os.stat(p).st_size == 5 * BS
        os.fsync(fd)
    finally:
        os.close(fd)
    data = p.read_bytes()
    assert len(data) == 5 * BS and data[: BS + 333] == BASE_FILES["base/1/200"]


def test_truncate_then_extend(mnt: Path, tmp_path: Path) -> None:
    """Lesson 23: truncate hides backup bytes for good, across re-extension and remount."""
    p = mnt / "base/1/100"
    os.truncate(p, 100)
    assert p.stat().st_size == 100
    os.truncate(p, 3 * BS)
    want = BASE_FILES["base/1/100"][:100] + bytes(3 * BS - 100)
    assert p.read_bytes() == want
    unmount(mnt, tmp_path / "diff")
    mount(mnt, tmp_path / "diff", plain=tmp_path / "base")
    assert p.read_bytes() == want
    with open(p, "wb"):  # O_TRUNC over a backup file
        pass
    assert p.stat().st_size == 0
    os.truncate(p, BS)
    assert p.read_bytes() == bytes(BS)


def test_open_file_keeps_working_after_unlink(mnt: Path) -> None:
    """Lesson 32."""
    fd = os.open(mnt / "base/1/200", os.O_RDWR)
    try:
        os.unlink(mnt / "base/1/200")
        assert os.pread(fd, 100, 0) == BASE_FILES["base/1/200"][:100]
        os.pwrite(fd, b"new", 0)
        assert os.pread(fd, 5, 0) == b"new" + BASE_FILES["base/1/200"][3:5]
        # a new file at the same path is another object
        (mnt / "base/1/200").write_bytes(b"other")
        assert os.pread(fd, 3, 0) == b"new"
    finally:
        os.close(fd)
    assert (mnt / "base/1/200").read_bytes() == b"other"


def test_link_symlink_rename_replace(mnt: Path) -> None:
    os.link(mnt / "conf", mnt / "conf.hard")
    assert os.stat(mnt / "conf").st_nlink == 2
    assert os.stat(mnt / "conf").st_ino == os.stat(mnt / "conf.hard").st_ino
    with open(mnt / "conf.hard", "ab") as f:
        f.write(b"more\n")
    assert (mnt / "conf").read_bytes() == b"setting = 1\nmore\n"
    os.symlink("/some/where", mnt / "sym")
    assert os.readlink(mnt / "sym") == "/some/where"
    (mnt / "new").write_bytes(b"replacement")
    os.rename(mnt / "new", mnt / "base/1/100")  # atomic replace of a backup file
    assert (mnt / "base/1/100").read_bytes() == b"replacement"
    assert not (mnt / "new").exists()
    os.rename(mnt / "d", mnt / "emptydir/moved")  # a directory with backup-only children
    assert (mnt / "emptydir/moved/e/deep").read_bytes() == BASE_FILES["d/e/deep"]
    with pytest.raises(OSError) as e:
        os.rmdir(mnt / "emptydir")
    assert e.value.errno == errno.ENOTEMPTY


def test_fsync_fsyncdir_statfs_fallocate(mnt: Path) -> None:
    """Never ENOSYS/EOPNOTSUPP from fsync; fallocate extends or says EOPNOTSUPP."""
    fd = os.open(mnt / "conf", os.O_RDWR)
    try:
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dfd = os.open(mnt / "base", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    sv = os.statvfs(mnt)
    assert sv.f_blocks > 0 and sv.f_bsize > 0
    fd = os.open(mnt / "falloc", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, 3 * BS)  # glibc falls back to writing zeros
        assert os.fstat(fd).st_size == 3 * BS
        assert os.pread(fd, 3 * BS, 0) == bytes(3 * BS)
    finally:
        os.close(fd)
    assert os.access(mnt / "conf", os.R_OK | os.W_OK)


def test_chmod_chown_and_new_file_owner(mnt: Path, tmp_path: Path) -> None:
    os.chmod(mnt / "conf", 0o640)
    os.chown(mnt / "conf", 12345, 54321)
    (mnt / "mine").write_bytes(b"x")
    st1 = os.stat(mnt / "mine")
    assert (st1.st_uid, st1.st_gid) == (os.geteuid(), os.getegid())
    unmount(mnt, tmp_path / "diff")
    mount(mnt, tmp_path / "diff", plain=tmp_path / "base")
    st2 = os.stat(mnt / "conf")
    assert stat.S_IMODE(st2.st_mode) == 0o640 and (st2.st_uid, st2.st_gid) == (12345, 54321)


def test_nothing_internal_visible_and_renames_copy_nothing(mnt: Path, tmp_path: Path) -> None:
    """Lessons 31 and 'rename of a backup file copies no data' (WAL recycling)."""
    os.rename(mnt / "d/e/deep", mnt / "d/e/recycled")
    os.unlink(mnt / "base/1/100")
    objects = tmp_path / "diff" / "objects"
    assert os.listdir(objects) == [] or all(
        os.path.getsize(objects / n) == 0 for n in os.listdir(objects)
    )
    names = set()
    for _dp, dns, fns in os.walk(mnt):
        names.update(dns + fns)
    assert not any(n.endswith((".map", ".patch", ".full")) or n.startswith(".pbkfs")
                   for n in names)


def test_remount_after_kill9_keeps_fsynced_state(mnt: Path, tmp_path: Path) -> None:
    """Durability: what fsync/fsyncdir acknowledged survives kill -9 of every pbkfs process."""
    from tests.support.mounting import kill9_mount

    diff = tmp_path / "diff"
    with open(mnt / "base/1/100", "r+b") as f:
        f.seek(2 * BS + 5)
        f.write(b"durable")
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(mnt / "created", os.O_RDWR | os.O_CREAT, 0o600)
    os.pwrite(fd, b"z" * 50000, 0)
    os.fsync(fd)
    os.close(fd)
    os.rename(mnt / "conf", mnt / "conf.renamed")
    dfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)
    pids = kill9_mount(diff)
    assert len(pids) == 3
    unmount(mnt, diff)  # clears the dead endpoint
    mount(mnt, diff, plain=tmp_path / "base")
    data = (mnt / "base/1/100").read_bytes()
    assert data[2 * BS + 5 : 2 * BS + 12] == b"durable" and len(data) == 3 * BS
    assert (mnt / "created").read_bytes() == b"z" * 50000
    assert (mnt / "conf.renamed").read_bytes() == BASE_FILES["conf"]
    assert not (mnt / "conf").exists()


def test_concurrent_writers_and_readers(mnt: Path) -> None:
    """Threads write distinct files and distinct blocks of one file; readers never see torn
    or stale blocks."""
    nblocks = 32
    big = mnt / "shared"
    with open(big, "wb") as f:
        f.write(bytes(nblocks * BS))
    published = [0] * nblocks  # version last acknowledged per block
    lock = threading.Lock()
    errors: list[str] = []
    stop = threading.Event()

    def block_bytes(b: int, v: int) -> bytes:
        return (b.to_bytes(4, "little") + v.to_bytes(4, "little")) * (BS // 8)

    def writer(first: int) -> None:
        fd = os.open(big, os.O_RDWR)
        try:
            for v in range(1, 40):
                for b in range(first, nblocks, 4):
                    os.pwrite(fd, block_bytes(b, v), b * BS)
                    with lock:
                        published[b] = v
        finally:
            os.close(fd)

    def reader() -> None:
        fd = os.open(big, os.O_RDONLY)
        try:
            rng = random.Random()
            while not stop.is_set():
                b = rng.randrange(nblocks)
                with lock:
                    floor = published[b]
                data = os.pread(fd, BS, b * BS)
                words = {data[i : i + 8] for i in range(0, BS, 8)}
                if len(words) != 1:
                    errors.append(f"torn block {b}")
                    return
                word = words.pop()
                bb, v = int.from_bytes(word[:4], "little"), int.from_bytes(word[4:], "little")
                if (v and bb != b) or v < floor:
                    errors.append(f"block {b}: version {v} < acknowledged {floor}")
                    return
        finally:
            os.close(fd)

    def file_writer(i: int) -> None:
        p = mnt / f"own{i}"
        data = random.Random(i).randbytes(100_000)
        for _ in range(5):
            p.write_bytes(data)
            if p.read_bytes() != data:
                errors.append(f"own{i} mismatch")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=file_writer, args=(i,)) for i in range(4)]
    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads + readers:
        t.start()
    for t in threads:
        t.join(timeout=300)
    stop.set()
    for t in readers:
        t.join(timeout=60)
    assert not errors, errors[:5]
    final = big.read_bytes()
    for b in range(nblocks):
        assert final[b * BS : (b + 1) * BS] == block_bytes(b, 39)


def test_many_create_unlink_cycles_through_the_mount(mnt: Path, tmp_path: Path) -> None:
    """Per-inode state is freed: the diff holds no leftovers after create/unlink cycles."""
    for i in range(3000):
        p = mnt / f"tmp{i % 5}"
        p.write_bytes(b"x" * (i % 300))
        p.unlink()
    assert [n for n in os.listdir(mnt) if n.startswith("tmp")] == []
    # Objects of unlinked files are deleted once the kernel forgets them and the journal
    # records removing their names are durable (a directory fsync, or the mount's own
    # periodic journal sync): contract rule D3.
    dfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)
    fusectl_drop_caches()
    objects = tmp_path / "diff" / "objects"
    deadline = time.monotonic() + 60
    while len(left := os.listdir(objects)) >= 3000 // 10:
        assert time.monotonic() < deadline, len(left)
        time.sleep(0.1)


def fusectl_drop_caches() -> None:
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


# ---- the state machine: mount vs tmpfs --------------------------------------------

DIRS = ["", "base", "base/1", "d", "nd"]
NOT_UTF8 = os.fsdecode(b"n\xff\xfe")  # a name that is not valid UTF-8
NAMES = ["base/1/100", "base/1/200", "conf", "d/e/deep", "a", "b", "base/x", "nd/y",
         f"d/{NOT_UTF8}"]
SPECIAL = ["fifo", "d/sock", f"{NOT_UTF8}.fifo"]


def outcome(fn, *args):  # type: ignore[no-untyped-def]
    try:
        r = fn(*args)
        return ("ok", r)
    except OSError as exc:
        return ("err", exc.errno)


class MountVsTmpfs(RuleBasedStateMachine):
    """Same operations on both trees; every outcome and every byte must agree."""

    remounts = False

    def __init__(self) -> None:
        super().__init__()
        require_fuse()
        self.work = Path(tempfile.mkdtemp(prefix="pbkfs-sm-", dir="/tmp"))
        self.ref = Path(tempfile.mkdtemp(prefix="pbkfs-ref-", dir="/dev/shm"))
        make_base(self.work / "base")
        shutil.copytree(self.work / "base", self.ref, dirs_exist_ok=True, symlinks=True)
        self.mnt = self.work / "mnt"
        self.mnt.mkdir()
        self.diff = self.work / "diff"
        mount(self.mnt, self.diff, plain=self.work / "base", workers=2)
        self.fds: list[tuple[int, int]] = []
        self.big_done = False

    def both(self, fn, rel: str, *args):  # type: ignore[no-untyped-def]
        a = outcome(fn, str(self.mnt / rel), *args)
        b = outcome(fn, str(self.ref / rel), *args)
        return a, b

    @rule(path=st.sampled_from(NAMES), data=st.binary(max_size=3 * BS),
          off=st.integers(0, 5 * BS))
    def pwrite_path(self, path: str, data: bytes, off: int) -> None:
        def op(p: str) -> int:
            fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                return os.pwrite(fd, data, off)
            finally:
                os.close(fd)

        a, b = self.both(op, path)
        assert a == b

    @rule(path=st.sampled_from(NAMES), data=st.binary(max_size=BS))
    def rewrite(self, path: str, data: bytes) -> None:
        def op(p: str) -> int:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                return os.write(fd, data)
            finally:
                os.close(fd)

        a, b = self.both(op, path)
        assert a == b

    @rule(path=st.sampled_from(NAMES), size=st.integers(0, 5 * BS))
    def truncate(self, path: str, size: int) -> None:
        a, b = self.both(os.truncate, path, size)
        assert a == b

    @rule(src=st.sampled_from(NAMES + DIRS[1:]), dst=st.sampled_from(NAMES + DIRS[1:]))
    def rename(self, src: str, dst: str) -> None:
        a = outcome(os.rename, str(self.mnt / src), str(self.mnt / dst))
        b = outcome(os.rename, str(self.ref / src), str(self.ref / dst))
        assert a == b, (src, dst)

    @rule(src=st.sampled_from(NAMES), dst=st.sampled_from(NAMES))
    def link(self, src: str, dst: str) -> None:
        a = outcome(os.link, str(self.mnt / src), str(self.mnt / dst))
        b = outcome(os.link, str(self.ref / src), str(self.ref / dst))
        assert a == b

    @rule(path=st.sampled_from(NAMES))
    def unlink(self, path: str) -> None:
        a, b = self.both(os.unlink, path)
        assert a == b

    @rule(path=st.sampled_from(NAMES), dest=st.sampled_from(["a", "conf", "/nonexistent/y"]))
    def symlink(self, path: str, dest: str) -> None:
        a = outcome(os.symlink, dest, str(self.mnt / path))
        b = outcome(os.symlink, dest, str(self.ref / path))
        assert a == b

    @rule(path=st.sampled_from(NAMES + DIRS[1:]), mode=st.sampled_from([0o600, 0o640, 0o755]))
    def chmod(self, path: str, mode: int) -> None:
        a = outcome(os.chmod, str(self.mnt / path), mode)
        b = outcome(os.chmod, str(self.ref / path), mode)
        assert a == b

    @rule(path=st.sampled_from(DIRS[1:]))
    def mkdir(self, path: str) -> None:
        a, b = self.both(os.mkdir, path, 0o700)
        assert a == b

    @rule(path=st.sampled_from(DIRS[1:] + ["d/e", "emptydir"]))
    def rmdir(self, path: str) -> None:
        a, b = self.both(os.rmdir, path)
        assert a == b

    @precondition(lambda self: len(self.fds) < 6)
    @rule(path=st.sampled_from(NAMES))
    def open_keep(self, path: str) -> None:
        a, b = self.both(os.open, path, os.O_RDWR)
        assert a[0] == b[0]
        if a[0] == "ok":
            self.fds.append((a[1], b[1]))
        else:
            assert a == b

    @precondition(lambda self: bool(self.fds))
    @rule(i=st.integers(0, 5), data=st.binary(max_size=2 * BS), off=st.integers(0, 4 * BS))
    def write_open(self, i: int, data: bytes, off: int) -> None:
        fm, fr = self.fds[i % len(self.fds)]
        assert os.pwrite(fm, data, off) == os.pwrite(fr, data, off)

    @precondition(lambda self: bool(self.fds))
    @rule(i=st.integers(0, 5), off=st.integers(0, 5 * BS), n=st.integers(0, 3 * BS))
    def read_open(self, i: int, off: int, n: int) -> None:
        fm, fr = self.fds[i % len(self.fds)]
        assert os.pread(fm, n, off) == os.pread(fr, n, off)
        assert os.fstat(fm).st_size == os.fstat(fr).st_size

    @precondition(lambda self: bool(self.fds))
    @rule(i=st.integers(0, 5), size=st.integers(0, 4 * BS))
    def ftruncate_open(self, i: int, size: int) -> None:
        fm, fr = self.fds[i % len(self.fds)]
        os.ftruncate(fm, size)
        os.ftruncate(fr, size)

    @precondition(lambda self: bool(self.fds))
    @rule(i=st.integers(0, 5))
    def fsync_open(self, i: int) -> None:
        fm, _fr = self.fds[i % len(self.fds)]
        os.fsync(fm)

    @precondition(lambda self: bool(self.fds))
    @rule(i=st.integers(0, 5))
    def close(self, i: int) -> None:
        fm, fr = self.fds.pop(i % len(self.fds))
        os.close(fm)
        os.close(fr)

    @rule(path=st.sampled_from(NAMES), cut=st.integers(0, 4 * BS), grow=st.integers(1, 2 * BS))
    def truncate_then_extend(self, path: str, cut: int, grow: int) -> None:
        """A cut inside or across backup blocks, then an extend: zeros, never old bytes."""
        a1, b1 = self.both(os.truncate, path, cut)
        a2, b2 = self.both(os.truncate, path, cut + grow)
        assert (a1, a2) == (b1, b2)

    @rule(path=st.sampled_from(SPECIAL), kind=st.sampled_from(["fifo", "socket"]))
    def make_special(self, path: str, kind: str) -> None:
        def op(p: str) -> None:
            if kind == "fifo":
                os.mkfifo(p, 0o600)
                return
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.bind(p)

        a, b = self.both(op, path)
        assert a == b

    @precondition(lambda self: not self.big_done)
    @rule(seed=st.integers(0, 3))
    def many_writers(self, seed: int) -> None:
        """Eight writers at once, 72 MiB in all (past the 64 MiB an earlier write-behind
        queued), on the mount; the same bytes written plainly on the reference."""
        self.big_done = True
        chunk = 1 << 20

        def data(k: int) -> bytes:
            return bytes([(seed * 31 + k) % 251]) * chunk

        def writer(fd: int, first: int) -> None:
            for k in range(first, 72, 8):
                os.pwrite(fd, data(k), (k // 2) * chunk)

        fds = [os.open(self.mnt / f"big{i}", os.O_RDWR | os.O_CREAT, 0o600) for i in range(2)]
        try:
            threads = [threading.Thread(target=writer, args=(fds[k % 2], k)) for k in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=300)
            assert not any(t.is_alive() for t in threads), "a writer hung"
        finally:
            for fd in fds:
                os.close(fd)
        for i in range(2):
            fd = os.open(self.ref / f"big{i}", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                for k in range(i, 72, 2):  # the same writes, in an order the threads allow
                    os.pwrite(fd, data(k), (k // 2) * chunk)
            finally:
                os.close(fd)

    @rule()
    def drop_caches(self) -> None:
        """What the kernel cached must agree with what pbkfs serves afterwards."""
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")

    @precondition(lambda self: self.remounts)
    @rule()
    def remount(self) -> None:
        for fm, fr in self.fds:
            os.close(fm)
            os.close(fr)
        self.fds = []
        unmount(self.mnt, self.diff)
        mount(self.mnt, self.diff, plain=self.work / "base", workers=2)

    @invariant()
    def trees_agree(self) -> None:
        assert tree(self.mnt) == tree(self.ref)

    def teardown(self) -> None:
        for fm, fr in self.fds:
            os.close(fm)
            os.close(fr)
        try:
            unmount(self.mnt, self.diff)
        except Exception:
            force_unmount(self.mnt, self.diff)
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.ref, ignore_errors=True)


def tree(root: Path) -> list[tuple[str, str, int, int, bytes | str]]:
    out: list[tuple[str, str, int, int, bytes | str]] = []
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            p = os.path.join(dp, n)
            rel = os.path.relpath(p, root)
            st_ = os.lstat(p)
            mode = stat.S_IMODE(st_.st_mode)
            if stat.S_ISLNK(st_.st_mode):
                out.append((rel, "l", 0, 0, os.readlink(p)))
            elif stat.S_ISFIFO(st_.st_mode) or stat.S_ISSOCK(st_.st_mode):
                kind = "p" if stat.S_ISFIFO(st_.st_mode) else "s"
                out.append((rel, kind, st_.st_nlink, mode, b""))
            elif stat.S_ISDIR(st_.st_mode):
                out.append((rel, "d", st_.st_nlink, mode, b""))
            else:
                with open(p, "rb") as f:
                    out.append((rel, "f", st_.st_nlink, mode, f.read()))
    return sorted(out)


class MountVsTmpfsRemounting(MountVsTmpfs):
    remounts = True


TestMountVsTmpfs = MountVsTmpfs.TestCase
TestMountVsTmpfs.settings = settings(
    max_examples=12, stateful_step_count=25, deadline=None,
    suppress_health_check=list(HealthCheck),
)
TestMountVsTmpfsRemounting = MountVsTmpfsRemounting.TestCase
TestMountVsTmpfsRemounting.settings = settings(
    max_examples=6, stateful_step_count=20, deadline=None,
    suppress_health_check=list(HealthCheck),
)
