"""The write path with real worker processes: no hang, no stale byte, no lost fsync.

Each test here is a regression test for a defect of the earlier write-behind
design (docs/CONTRACT.md names them).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from pathlib import Path

import pytest
import trio

from pbkfs.diff.objects import data_path
from pbkfs.fs.namespace import FsError
from pbkfs.fs.vfs import Vfs
from pbkfs.ipc.router import Router
from tests.support.corefs import lookup_path, make_base, run_vfs

BS = 8192


def test_many_concurrent_writers_past_any_limit_never_hang(tmp_path: Path) -> None:
    """Three big files written by 24 writers at once (96 MiB in flight), then read back.

    The earlier write-behind bounded queued bytes with one shared event that each
    blocked writer replaced: only the newest was woken, and the others hung.
    """
    chunk = 256 * 1024
    per_file = 32 << 20

    async def body(vfs: Vfs, router: Router) -> None:
        handles = [vfs.create(1, f"big{i}", 0o600, os.O_RDWR, 0, 0)[0] for i in range(3)]

        async def writer(fh: int, start: int) -> None:
            for off in range(start, per_file, 8 * chunk):
                await vfs.write(fh, off, bytes([off // chunk % 251]) * chunk)

        with trio.fail_after(240):
            async with trio.open_nursery() as n:
                for fh in handles:
                    for k in range(8):
                        n.start_soon(writer, fh, k * chunk)
            for fh in handles:
                await vfs.fsync(fh, True)
        for fh in handles:
            for off in (0, 5 * chunk, per_file - chunk):
                assert await vfs.read(fh, off, chunk) == bytes([off // chunk % 251]) * chunk
            assert vfs.handles[fh].node.size == per_file

    run_vfs(tmp_path, body)


@pytest.mark.parametrize("remount", [False, True])
def test_truncate_inside_a_backup_block_then_extend_shows_zeros(
    tmp_path: Path, remount: bool
) -> None:
    """`truncate -s1 PG_VERSION; truncate -s3 PG_VERSION` reads "1\\0\\0", never "15\\n"."""
    files = make_base(tmp_path / "base")
    rel = files["base/1/100"]

    async def body(vfs: Vfs, router: Router) -> None:
        pv = lookup_path(vfs, "PG_VERSION")
        await vfs.setattr(pv, size=1)
        await vfs.setattr(pv, size=3)
        ino = lookup_path(vfs, "base/1/100")
        await vfs.setattr(ino, size=2 * BS + 100)  # inside block 2
        await vfs.setattr(ino, size=4 * BS)
        other = lookup_path(vfs, "base/1/200")
        await vfs.setattr(other, size=BS)  # on a block boundary
        await vfs.setattr(other, size=BS + 77)

    async def check(vfs: Vfs, router: Router) -> None:
        fh = await vfs.open(lookup_path(vfs, "PG_VERSION"), os.O_RDONLY)
        assert await vfs.read(fh, 0, 10) == b"1\0\0"
        fh = await vfs.open(lookup_path(vfs, "base/1/100"), os.O_RDONLY)
        assert await vfs.read(fh, 0, 4 * BS) == rel[: 2 * BS + 100] + bytes(2 * BS - 100)
        fh = await vfs.open(lookup_path(vfs, "base/1/200"), os.O_RDONLY)
        assert await vfs.read(fh, 0, 2 * BS) == files["base/1/200"][:BS] + bytes(77)

    if remount:
        run_vfs(tmp_path, body)
        run_vfs(tmp_path, check)
    else:
        async def both(vfs: Vfs, router: Router) -> None:
            await body(vfs, router)
            await check(vfs, router)

        run_vfs(tmp_path, both)


def test_a_failed_write_reaches_every_open_descriptor_once(tmp_path: Path) -> None:
    """errseq: each handle open at the failure, or opened before any handle reported it,
    reports it at its next fsync, once; a handle opened after it was reported does not."""

    async def body(vfs: Vfs, router: Router) -> None:
        fh1, node = vfs.create(1, "doomed", 0o600, os.O_RDWR, 0, 0)
        fh2 = await vfs.open(node.ino, os.O_RDONLY)
        assert node.fid is not None
        os.mkdir(data_path(vfs.objects, node.fid))  # the data file cannot be opened
        with pytest.raises(FsError) as e:
            await vfs.write(fh1, 0, b"lost")  # the WRITE itself fails
        assert e.value.errno == errno.EISDIR
        unseen = await vfs.open(node.ino, os.O_RDWR)  # nobody has reported it yet
        for fh in (unseen, fh1, fh2):
            with pytest.raises(FsError) as e:
                await vfs.fsync(fh, True)
            assert e.value.errno == errno.EISDIR
        late = await vfs.open(node.ino, os.O_RDWR)  # opened after it was reported
        await vfs.fsync(fh1, True)  # reported once: nothing failed since
        await vfs.flush(fh2)  # fh2 has seen every failure so far
        await vfs.flush(late)
        await vfs.fsync(late, True)
        for fh in (fh1, fh2, unseen, late):
            await vfs.release(fh)

    run_vfs(tmp_path, body)


def _restarted_hook(vfs: Vfs, router: Router) -> list[int]:
    seen: list[int] = []

    def hook(index: int) -> None:
        vfs.worker_restarted(index)
        seen.append(index)

    router.on_restart = hook
    return seen


async def _wait_restarted(router: Router, seen: list[int]) -> None:
    with trio.fail_after(60):
        while not seen or not router.conns[0].ready.is_set():
            await trio.sleep(0.01)


def test_a_worker_restart_loses_no_answered_write(tmp_path: Path) -> None:
    """A worker killed with answered but unsynced writes to a backup file: the new worker
    adopts their block-map bits from shared memory, so the writes read back as written
    (never the backup's older page), every fsync succeeds, and they are durable after it."""
    files = make_base(tmp_path / "base")

    async def body(vfs: Vfs, router: Router) -> None:
        seen = _restarted_hook(vfs, router)
        ino = lookup_path(vfs, "base/1/100")
        fh = await vfs.open(ino, os.O_RDWR)
        other = await vfs.open(ino, os.O_RDONLY)
        await vfs.write(fh, 0, b"S" * BS)
        await vfs.fsync(fh, True)
        await vfs.write(fh, 2 * BS, b"U" * BS)  # answered, not synced
        await vfs.write(fh, 3 * BS + 100, b"u" * 10)  # a partial block, not synced
        os.kill(router.conns[0].pid, signal.SIGKILL)
        await _wait_restarted(router, seen)
        assert await vfs.read(fh, 2 * BS, BS) == b"U" * BS
        for h in (fh, other):
            await vfs.fsync(h, True)
        assert await vfs.read(fh, 0, BS) == b"S" * BS

    async def check(vfs: Vfs, router: Router) -> None:
        fh = await vfs.open(lookup_path(vfs, "base/1/100"), os.O_RDONLY)
        rel = files["base/1/100"]
        want = (b"S" * BS + rel[BS : 2 * BS] + b"U" * BS + rel[3 * BS : 3 * BS + 100]
                + b"u" * 10 + rel[3 * BS + 110 :])
        assert await vfs.read(fh, 0, 4 * BS) == want

    run_vfs(tmp_path, body, workers=1)
    run_vfs(tmp_path, check, workers=1)


def test_a_worker_that_keeps_dying_comes_back_after_a_wait(tmp_path: Path) -> None:
    """A worker killed again and again (the OOM killer on a starved host): the first
    restarts are at once; past MAX_RESTARTS_PER_MINUTE its inodes answer EIO for a wait
    that doubles, and then a new worker serves them again (a crash loop does not spin,
    and the mount is never left broken for good)."""
    from pbkfs.ipc.router import MAX_RESTARTS_PER_MINUTE, restart_delay

    assert [restart_delay(n) for n in range(MAX_RESTARTS_PER_MINUTE)] == [0.0] * 5
    assert restart_delay(MAX_RESTARTS_PER_MINUTE) == 2.0
    assert restart_delay(MAX_RESTARTS_PER_MINUTE + 1) == 4.0
    assert restart_delay(1000) == 60.0
    files = make_base(tmp_path / "base")

    async def body(vfs: Vfs, router: Router) -> None:
        seen = _restarted_hook(vfs, router)
        fh = await vfs.open(lookup_path(vfs, "base/1/100"), os.O_RDWR)
        await vfs.write(fh, 0, b"K" * BS)
        await vfs.fsync(fh, True)
        for kills in range(1, MAX_RESTARTS_PER_MINUTE + 2):
            os.kill(router.conns[0].pid, signal.SIGKILL)
            if kills <= MAX_RESTARTS_PER_MINUTE:
                await _wait_restarted(router, seen)
                seen.clear()
                assert await vfs.read(fh, 0, BS) == b"K" * BS
        # the sixth death: a wait of restart_delay(5) = 2 s, EIO meanwhile
        with trio.fail_after(30):
            while router.conns[0].alive:
                await trio.sleep(0.01)
        with pytest.raises(FsError) as err:
            await vfs.read(fh, BS, BS)
        assert err.value.errno == errno.EIO
        await _wait_restarted(router, seen)
        assert await vfs.read(fh, 0, BS) == b"K" * BS
        assert await vfs.read(fh, BS, BS) == files["base/1/100"][BS:2 * BS]

    run_vfs(tmp_path, body, workers=1)


def test_object_files_go_only_after_the_name_removal_is_durable(tmp_path: Path) -> None:
    """PostgreSQL's durable rename: a file fsynced, then renamed over or unlinked. Its
    object is deleted only once the journal record removing the name is durable, so a
    crash before the directory fsync brings the name back with its fsynced content."""

    async def body(vfs: Vfs, router: Router) -> None:
        vfs.journal.sync()
        fh, old = vfs.create(1, "postmaster.pid", 0o600, os.O_RDWR, 0, 0)
        await vfs.write(fh, 0, b"12345\n")
        await vfs.fsync(fh, True)
        await vfs.release(fh)
        vfs.forget([(old.ino, old.lookups)])
        assert old.fid is not None
        path = data_path(vfs.objects, old.fid)
        vfs.unlink(1, "postmaster.pid")  # journal record appended, not yet durable
        fh2, new = vfs.create(1, "tmp", 0o600, os.O_RDWR, 0, 0)
        await vfs.write(fh2, 0, b"x")
        await vfs.fsync(fh2, True)  # syncs the journal: the removal may go now
        with trio.fail_after(30):
            while os.path.exists(path):
                await trio.sleep(0.01)
        assert vfs.removals == []

    async def unsynced(vfs: Vfs, router: Router) -> None:
        fh, node = vfs.create(1, "kept", 0o600, os.O_RDWR, 0, 0)
        await vfs.write(fh, 0, b"fsynced")
        await vfs.fsync(fh, True)
        await vfs.release(fh)
        vfs.forget([(node.ino, node.lookups)])
        assert node.fid is not None
        vfs.unlink(1, "kept")
        await trio.sleep(0.3)  # a removal sent now would have been handled by now
        assert os.path.exists(data_path(vfs.objects, node.fid))
        assert len(vfs.removals) == 1
        await vfs.fsyncdir(0, False)
        with trio.fail_after(30):
            while os.path.exists(data_path(vfs.objects, node.fid)):
                await trio.sleep(0.01)

    run_vfs(tmp_path, body)
    run_vfs(tmp_path / "again", unsynced)


def test_a_stopped_worker_gets_eio_not_a_hang(tmp_path: Path) -> None:
    """A worker stopped with SIGSTOP: its requests fail with EIO after `request_timeout`,
    a new worker takes over, and the file system answers again."""
    files = make_base(tmp_path / "base")

    async def body(vfs: Vfs, router: Router) -> None:
        seen = _restarted_hook(vfs, router)
        router.request_timeout = 2.0
        ino = lookup_path(vfs, "base/1/100")
        fh = await vfs.open(ino, os.O_RDWR)
        await vfs.write(fh, 0, b"W" * BS)
        await vfs.fsync(fh, True)
        stopped = router.conns[0].pid
        os.kill(stopped, signal.SIGSTOP)
        try:
            with trio.fail_after(60):
                with pytest.raises(FsError) as e:
                    await vfs.read(fh, BS, BS)
            assert e.value.errno == errno.EIO
            await _wait_restarted(router, seen)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGCONT)
        assert router.conns[0].pid != stopped
        assert await vfs.read(fh, 0, 2 * BS) == b"W" * BS + files["base/1/100"][BS : 2 * BS]

    run_vfs(tmp_path, body, workers=1)
