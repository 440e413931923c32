"""The file-system core with real worker processes, without FUSE.

Requests go through the router to `python -m workers` processes over pipes,
exactly as in a mount; only the kernel is missing.
"""

from __future__ import annotations

import errno
import os
import random
import signal
from pathlib import Path

import pyfuse3
import pytest
import trio

from pbkfs.fs.namespace import FsError
from pbkfs.fs.vfs import Vfs
from pbkfs.ipc.router import Router
from pbkfs.mount.fuseops import Operations
from tests.support.corefs import lookup_path, make_base, run_vfs

BS = 8192


def test_write_then_read_in_order_and_hot_path(tmp_path: Path) -> None:
    """Lesson 10: a read after a write sees it; later reads of diff blocks skip the worker."""
    files = make_base(tmp_path / "base")

    async def body(vfs: Vfs, router: Router) -> None:
        ino = lookup_path(vfs, "base/1/100")
        fh = await vfs.open(ino, os.O_RDWR)
        # many writes in flight at once, each followed by a read of the same range
        async with trio.open_nursery() as n:
            for b in range(4):
                n.start_soon(vfs.write, fh, b * BS, bytes([b + 1]) * BS)
        data = await vfs.read(fh, 0, 4 * BS)
        assert data == b"".join(bytes([b + 1]) * BS for b in range(4))
        hot = vfs.stats.reads_hot
        assert await vfs.read(fh, BS, BS) == bytes([2]) * BS
        assert vfs.stats.reads_hot == hot + 1  # served by pread after the shm check
        await vfs.release(fh)
        ino2 = lookup_path(vfs, "base/1/200")
        fh2 = await vfs.open(ino2, os.O_RDONLY)
        assert await vfs.read(fh2, 0, 10 * BS) == files["base/1/200"]
        await vfs.release(fh2)

    run_vfs(tmp_path, body)


def test_interleaved_writes_and_reads_match_model(tmp_path: Path) -> None:
    """Per-inode FIFO end to end: fire requests without waiting, then compare with a model."""
    files = make_base(tmp_path / "base")

    async def body(vfs: Vfs, router: Router) -> None:
        ino = lookup_path(vfs, "base/1/100")
        fh = await vfs.open(ino, os.O_RDWR)
        model = bytearray(files["base/1/100"])
        rng = random.Random(3)
        results: list[tuple[bytes, bytes]] = []

        async def read_check(off: int, n: int, want: bytes) -> None:
            results.append((await vfs.read(fh, off, n), want))

        async with trio.open_nursery() as nursery:
            for _ in range(200):
                off = rng.randrange(0, 6 * BS)
                if rng.random() < 0.6:
                    data = rng.randbytes(rng.randrange(1, 2 * BS))
                    if off > len(model):
                        model.extend(bytes(off - len(model)))
                    model[off : off + len(data)] = data
                    nursery.start_soon(vfs.write, fh, off, data)
                else:
                    n = rng.randrange(1, 2 * BS)
                    nursery.start_soon(read_check, off, n, bytes(model[off : off + n]))
                await trio.sleep(0)
        for got, want in results:
            assert got == want
        assert await vfs.read(fh, 0, 10 * BS) == bytes(model)

    run_vfs(tmp_path, body)


def test_open_file_survives_unlink_and_object_is_removed(tmp_path: Path) -> None:
    """Lesson 32: an unlinked open file keeps its content; its diff object goes at release."""

    async def body(vfs: Vfs, router: Router) -> None:
        fh, node = vfs.create(1, "tmpfile", 0o600, os.O_RDWR, 0, 0)
        await vfs.write(fh, 0, b"still here")
        fid = node.fid
        assert fid is not None
        vfs.unlink(1, "tmpfile")
        assert await vfs.read(fh, 0, 100) == b"still here"
        await vfs.release(fh)
        vfs.forget([(node.ino, 1)])
        await vfs.fsync_node(vfs.ns.root, False)  # a round trip to flush the Remove
        with trio.fail_after(30):
            while os.path.exists(os.path.join(vfs.objects, str(fid))):
                await trio.sleep(0.01)

    run_vfs(tmp_path, body)


def test_truncate_of_backup_file_and_size_answers(tmp_path: Path) -> None:
    """Lessons 8, 23: sizes answered right after a write/truncate reflect it."""
    files = make_base(tmp_path / "base")

    async def body(vfs: Vfs, router: Router) -> None:
        ino = lookup_path(vfs, "base/1/100")
        await vfs.setattr(ino, size=100)
        assert vfs.getattr(ino).size == 100
        fh = await vfs.open(ino, os.O_RDWR)
        await vfs.write(fh, 3 * BS, b"end")
        assert vfs.getattr(ino).size == 3 * BS + 3
        data = await vfs.read(fh, 0, 4 * BS)
        assert data == files["base/1/100"][:100] + bytes(3 * BS - 100) + b"end"

    run_vfs(tmp_path, body)


def test_durable_after_fsync_and_kill9_of_workers(tmp_path: Path) -> None:
    """Durability: fsynced data, size, map and name survive kill -9 of every process."""

    async def body(vfs: Vfs, router: Router) -> None:
        ino = lookup_path(vfs, "base/1/100")
        fh = await vfs.open(ino, os.O_RDWR)
        await vfs.write(fh, BS, b"A" * BS)
        await vfs.write(fh, 5 * BS, b"B" * 10)
        await vfs.fsync(fh, True)
        fh2, _node = vfs.create(1, "newfile", 0o600, os.O_RDWR, 0, 0)
        await vfs.write(fh2, 0, b"created")
        await vfs.fsync(fh2, False)
        for conn in router.conns:
            os.kill(conn.pid, signal.SIGKILL)
        raise _Killed

    class _Killed(Exception):
        pass

    with pytest.raises(BaseException) as exc:  # trio wraps it in a group
        run_vfs(tmp_path, body)
    assert exc.group_contains(_Killed) if hasattr(exc, "group_contains") else True

    async def check(vfs: Vfs, router: Router) -> None:
        ino = lookup_path(vfs, "base/1/100")
        assert vfs.getattr(ino).size == 5 * BS + 10
        fh = await vfs.open(ino, os.O_RDONLY)
        assert await vfs.read(fh, BS, BS) == b"A" * BS
        assert await vfs.read(fh, 5 * BS, 100) == b"B" * 10
        ino2 = lookup_path(vfs, "newfile")
        fh2 = await vfs.open(ino2, os.O_RDONLY)
        assert await vfs.read(fh2, 0, 100) == b"created"

    run_vfs(tmp_path, check)


def test_dead_worker_gives_eio_then_is_restarted(tmp_path: Path) -> None:
    """A killed worker: its requests in flight get EIO at once (no hang), a new process
    takes over from the diff on disk, and what was written and fsynced is still there."""
    files = make_base(tmp_path / "base")

    async def body(vfs: Vfs, router: Router) -> None:
        restarted: list[int] = []
        router.on_restart = restarted.append
        ino = lookup_path(vfs, "base/1/100")
        fh = await vfs.open(ino, os.O_RDWR)
        await vfs.write(fh, 0, b"W" * BS)
        await vfs.fsync(fh, True)
        conn = router.conns[router.worker_of(ino)]
        os.kill(conn.pid, signal.SIGSTOP)  # the next read is surely in flight at the kill
        with trio.fail_after(60):
            async with trio.open_nursery() as n:
                results: list[BaseException | bytes] = []

                async def reader() -> None:
                    try:
                        results.append(await vfs.read(fh, BS, BS))
                    except FsError as exc:
                        results.append(exc)

                n.start_soon(reader)
                await trio.sleep(0.2)
                os.kill(conn.pid, signal.SIGKILL)
            assert isinstance(results[0], FsError) and results[0].errno == errno.EIO
            while not restarted or not router.conns[0].ready.is_set():
                await trio.sleep(0.01)
        assert restarted == [0] and router.conns[0] is not conn
        assert await vfs.read(fh, 0, 2 * BS) == b"W" * BS + files["base/1/100"][BS : 2 * BS]
        await vfs.write(fh, 3 * BS, b"after")
        await vfs.fsync(fh, True)
        assert await vfs.read(fh, 3 * BS, 5) == b"after"

    run_vfs(tmp_path, body, workers=1)


def test_adapter_maps_errors_to_errno(tmp_path: Path) -> None:
    """The pyfuse3 adapter turns FsError into FUSEError with the same errno, bugs into EIO."""

    async def body(vfs: Vfs, router: Router) -> None:
        ops = Operations(vfs)
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.unlink(1, b"missing", None)
        assert e.value.errno == errno.ENOENT
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.rmdir(1, b"base", None)
        assert e.value.errno == errno.ENOTEMPTY
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.read(999, 0, 10)
        assert e.value.errno == errno.EBADF
        attrs = await ops.lookup(1, b"missing", None)
        assert attrs.st_ino == 0  # a cached negative entry
        real = vfs.getattr

        def broken(ino: int) -> object:
            raise RuntimeError("bug")

        vfs.getattr = broken  # type: ignore[method-assign,assignment]
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.getattr(1, None)
        assert e.value.errno == errno.EIO
        vfs.getattr = real  # type: ignore[method-assign]
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.mknod(1, b"dev", 0o20644, 0, _Ctx())  # a character device
        assert e.value.errno == errno.EPERM

    run_vfs(tmp_path, body)


class _Ctx:
    uid = 0
    gid = 0
    pid = os.getpid()
    umask = 0o22


def test_a_first_read_hook_runs_once_and_never_fails_the_read(tmp_path: Path) -> None:
    """The per-database prefetch (pbkfs.view.prefetch) starts at the first read of a
    database's relation map: not at an open (PostgreSQL's start opens and fsyncs every file
    without reading it), once, whoever reads, and a failing hook is only logged."""
    files = make_base(tmp_path / "base")

    async def body(vfs: Vfs, router: Router) -> None:
        ran: list[int] = []
        logged: list[str] = []
        vfs.log = logged.append
        first, second = lookup_path(vfs, "base/1/100"), lookup_path(vfs, "base/1/200")

        def boom() -> None:
            raise RuntimeError("cannot start a thread")

        vfs.first_read = {first: lambda: ran.append(first), second: boom}
        fh = await vfs.open(first, os.O_RDWR)
        await vfs.fsync(fh, False)
        await vfs.release(fh)
        assert ran == []  # opened and synced, never read
        for _ in range(3):
            fh = await vfs.open(first, os.O_RDONLY)
            assert await vfs.read(fh, 0, BS) == files["base/1/100"][:BS]
            await vfs.release(fh)
        assert ran == [first]
        fh = await vfs.open(second, os.O_RDONLY)
        assert await vfs.read(fh, 0, BS) == files["base/1/200"][:BS]  # served all the same
        await vfs.release(fh)
        assert vfs.first_read == {}
        assert any("cannot start a thread" in line for line in logged), logged

    run_vfs(tmp_path, body, workers=1)


def test_a_full_file_system_under_the_diff_is_logged_without_a_refused_request(
        tmp_path: Path) -> None:
    """PostgreSQL's WAL in <diff>/wal fills the disk without passing through the mount: the
    line naming the full diff comes from the periodic check all the same (not more than
    once per FULL_LOG_EVERY_S), also after the server removed the segment it could not
    fill (then the disk is not at 0 free, but has less than a segment)."""
    from tests.support.mounting import small_tmpfs

    make_base(tmp_path / "base")

    def write_segment(path: Path) -> bool:
        """As PostgreSQL makes a WAL segment: zeros to 16 MiB; on ENOSPC it unlinks it."""
        try:
            with open(path, "wb") as f:
                for _ in range((16 << 20) // 65536):
                    f.write(b"\0" * 65536)
                    f.flush()
            return True
        except OSError:
            path.unlink()
            return False

    async def body(vfs: Vfs, router: Router) -> None:
        logged: list[str] = []
        vfs.log = logged.append
        with small_tmpfs(tmp_path / "small", "48m") as small:
            vfs.statfs_path = str(small)
            (small / "data").write_bytes(b"\0" * (20 << 20))
            vfs.check_space()
            assert logged == []  # 28 MiB left: nothing said
            assert write_segment(small / "000000010000000000000001")
            assert not write_segment(small / "xlogtemp.1")  # fails, removed
            assert os.statvfs(small).f_bavail > 0
            vfs.check_space()
            vfs.check_space()
            assert len(logged) == 1 and f"the diff directory {small} is full" in logged[0]

    run_vfs(tmp_path, body, workers=1)


def test_random_reads_of_a_file_never_written_stay_with_its_worker(tmp_path: Path) -> None:
    """Four workers: page-sized reads of a never-written 3 MiB file all reach the inode's
    own worker (spread, each woke another process: 30 % slower under a cold select-only
    load); reads of readahead size reach exactly the SPREAD_WIDTH workers after the inode's
    own (one chunk each); every byte right."""
    from pbkfs.fs.vfs import SPREAD_WIDTH

    make_base(tmp_path / "base")
    data = random.Random(7).randbytes(3 << 20)
    (tmp_path / "base" / "base" / "1" / "300").write_bytes(data)

    async def body(vfs: Vfs, router: Router) -> None:
        ino = lookup_path(vfs, "base/1/300")
        fh = await vfs.open(ino, os.O_RDONLY)
        before = [c.sent for c in router.conns]
        for off in random.Random(8).sample(range(0, len(data), BS), 100):
            assert await vfs.read(fh, off, BS) == data[off:off + BS]
        small = [c.sent - b for c, b in zip(router.conns, before, strict=True)]
        assert small[ino % 4] == 100 and sum(small) == 100, small
        before = [c.sent for c in router.conns]
        for off in range(0, len(data), 1 << 20):
            assert await vfs.read(fh, off, 1 << 20) == data[off:off + (1 << 20)]
        big = [c.sent - b for c, b in zip(router.conns, before, strict=True)]
        spread_to = {(ino + chunk % SPREAD_WIDTH) % 4 for chunk in range(3)}
        assert sum(big) == 3 and {i for i, n in enumerate(big) if n} == spread_to, big
        await vfs.release(fh)

    run_vfs(tmp_path, body, workers=4)
