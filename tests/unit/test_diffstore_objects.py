"""The diff object store without a mount: copy-on-write blocks over a fake backup.

Each test names the lesson of pbkfs-reference-behaviour.md it guards.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from pbkfs.diff.blockmap import HEADER_SIZE, SLOT_SIZE, BlockMap, MapFormatError
from pbkfs.diff.objects import ObjectStore, data_path, map_path
from tests.support.fakebase import FakeBase, fake_base, store

BS = 8192


@pytest.fixture
def base() -> FakeBase:
    return fake_base()


def test_sparse_diff_reads_backup_data(tmp_path: Path, base: FakeBase) -> None:
    """Lessons 7, 13: unwritten blocks come from the backup, never from holes in the diff file."""
    s = store(tmp_path, base)
    new = b"\xab" * BS
    s.write(1, "rel", 2 * BS, new)
    got = s.read(1, "rel", 0, 5 * BS)
    want = base.files["rel"][: 2 * BS] + new + base.files["rel"][3 * BS :]
    assert got == want
    # the diff file is sparse, yet block 0 (a hole there) still reads the backup's bytes
    assert os.path.getsize(data_path(s.dir, 1)) == 5 * BS


def test_written_zero_page_is_not_a_hole(tmp_path: Path, base: FakeBase) -> None:
    """Lesson 13: a written all-zero page must read as zeros, not fall back to the backup."""
    s = store(tmp_path, base)
    s.write(1, "rel", BS, bytes(BS))
    assert s.read(1, "rel", BS, BS) == bytes(BS)
    s.fsync(1, datasync=True)
    s.close_all()
    s2 = store(tmp_path, base)
    assert s2.read(1, "rel", BS, BS) == bytes(BS)
    assert s2.read(1, "rel", 0, BS) == base.files["rel"][:BS]


def test_partial_write_brings_in_only_its_block(tmp_path: Path, base: FakeBase) -> None:
    """Lesson 35: an unaligned write reads and rewrites the touched block only."""
    s = store(tmp_path, base)
    s.write(1, "rel", 3 * BS + 10, b"XYZ")
    s.fsync(1, datasync=True)  # bits reach the map file only at fsync
    bm = BlockMap.load(map_path(s.dir, 1))
    assert [b for b in range(5) if bm.has(b) and b < bm.horizon] == [3]
    want = bytearray(base.files["rel"])
    want[3 * BS + 10 : 3 * BS + 13] = b"XYZ"
    assert s.read(1, "rel", 0, 5 * BS) == bytes(want)


def test_small_file_keeps_exact_length(tmp_path: Path, base: FakeBase) -> None:
    """Lesson 2: a copied-up small file is not padded to a block."""
    s = store(tmp_path, base)
    obj = s.write(1, "small", 0, b"H")
    assert obj.size == len(base.files["small"])
    assert s.read(1, "small", 0, 100) == b"Hello, world\n"
    assert os.path.getsize(data_path(s.dir, 1)) == len(base.files["small"])


def test_size_after_extending_write(tmp_path: Path, base: FakeBase) -> None:
    """Lessons 8, 14, 22: the size grows with the write and survives a reload."""
    s = store(tmp_path, base)
    obj = s.write(1, "odd", 4 * BS, bytes(BS))  # zero page past the end: size must move
    assert obj.size == 5 * BS
    s.fsync(1, datasync=True)
    s.close_all()
    s2 = store(tmp_path, base)
    data = s2.read(1, "odd", 0, 10 * BS)
    assert len(data) == 5 * BS
    assert data[: 2 * BS + 100] == base.files["odd"]
    assert data[2 * BS + 100 :] == bytes(3 * BS - 100)


def test_write_never_shrinks(tmp_path: Path, base: FakeBase) -> None:
    """Lesson 9: a write may only grow a file."""
    s = store(tmp_path, base)
    obj = s.write(1, "rel", 0, b"abc")
    assert obj.size == 5 * BS


@pytest.mark.parametrize("cut", [0, 100, BS, 2 * BS + 7])
def test_truncate_then_extend_never_resurrects_backup(
    tmp_path: Path, base: FakeBase, cut: int
) -> None:
    """Lessons 21, 23: blocks past a truncation never come from the backup again."""
    s = store(tmp_path, base)
    obj = s.truncate(1, "rel", cut)
    assert obj.size == cut
    assert s.read(1, "rel", 0, 10 * BS) == base.files["rel"][:cut]
    s.truncate(1, "rel", 5 * BS)
    want = base.files["rel"][:cut] + bytes(5 * BS - cut)
    assert s.read(1, "rel", 0, 5 * BS) == want
    s.write(1, "rel", 4 * BS + 1, b"!")  # re-extend through a write, too
    want = want[: 4 * BS + 1] + b"!" + want[4 * BS + 2 :]
    assert s.read(1, "rel", 0, 5 * BS) == want
    s.fsync(1, datasync=False)
    s.close_all()
    s2 = store(tmp_path, base)  # and after a remount
    assert s2.read(1, "rel", 0, 5 * BS) == want


def test_truncate_crash_between_file_and_horizon_is_repaired(
    tmp_path: Path, base: FakeBase
) -> None:
    """Crash rule: a data file shorter than the horizon says wins on load."""
    s = store(tmp_path, base)
    s.write(1, "rel", 0, b"x")  # create the object
    s.fsync(1, datasync=True)
    s.close_all()
    os.truncate(data_path(s.dir, 1), BS)  # the truncate happened, the horizon was not lowered
    s2 = store(tmp_path, base)
    assert s2.read(1, "rel", 0, 5 * BS) == b"x" + base.files["rel"][1:BS]
    s2.truncate(1, "rel", 3 * BS)
    assert s2.read(1, "rel", BS, 2 * BS) == bytes(2 * BS)


def test_file_created_in_mount_has_no_base(tmp_path: Path, base: FakeBase) -> None:
    s = store(tmp_path, base)
    s.write(7, None, 10, b"abc")
    assert s.read(7, None, 0, 100) == bytes(10) + b"abc"
    assert not os.path.exists(map_path(s.dir, 7))
    s.truncate(7, None, 5)
    assert s.read(7, None, 0, 100) == bytes(5)
    assert base.reads == 0


def test_reads_never_write_the_diff(tmp_path: Path, base: FakeBase) -> None:
    """Lesson 28: reading backup content writes nothing."""
    s = store(tmp_path, base)
    assert s.read_base("rel", 5 * BS, BS, 2 * BS) == base.files["rel"][BS : 3 * BS]
    assert os.listdir(s.dir) == []


def test_remove_deletes_object_files(tmp_path: Path, base: FakeBase) -> None:
    s = store(tmp_path, base)
    s.write(1, "rel", 0, b"x")
    s.remove(1)
    assert os.listdir(s.dir) == []


def test_map_header_survives_a_torn_slot(tmp_path: Path, base: FakeBase) -> None:
    """A torn header write destroys at most the older slot; the newer valid one is used."""
    s = store(tmp_path, base)
    s.truncate(1, "rel", 3 * BS)  # seq 2 -> slot 0 holds seq 2, slot 1 is empty
    s.truncate(1, "rel", 2 * BS)  # seq 3 -> slot 1
    s.close_all()
    path = map_path(s.dir, 1)
    bm = BlockMap.load(path, writable=False)
    assert bm.horizon == 2
    bm.close()
    with open(path, "r+b") as f:  # tear the newest slot: the older (horizon 3) is used
        f.seek(SLOT_SIZE + 20)
        f.write(b"\xff\xff")
    bm = BlockMap.load(path, writable=False)
    assert bm.horizon == 3
    bm.close()
    with open(path, "r+b") as f:
        f.seek(20)
        f.write(b"\xff\xff")
    with pytest.raises(MapFormatError):
        BlockMap.load(path, writable=False)


def test_unusable_map_starts_over_from_backup(tmp_path: Path, base: FakeBase) -> None:
    """Never guess: an object whose map cannot be read restarts from the backup content."""
    s = store(tmp_path, base)
    s.write(1, "rel", 0, b"zzz")
    s.close_all()
    with open(map_path(s.dir, 1), "r+b") as f:
        f.write(bytes(HEADER_SIZE))
    s2 = store(tmp_path, base)
    assert s2.read(1, "rel", 0, 5 * BS) == base.files["rel"]


def test_random_ops_match_a_model(tmp_path: Path, base: FakeBase) -> None:
    """Random writes/truncates/reloads agree with a bytearray model."""
    rng = random.Random(5)
    s = store(tmp_path, base)
    model = bytearray(base.files["odd"])
    for step in range(300):
        op = rng.random()
        if op < 0.55:
            off = rng.randrange(0, 6 * BS)
            data = rng.randbytes(rng.randrange(1, 3 * BS))
            s.write(1, "odd", off, data)
            if off > len(model):
                model += bytes(off - len(model))
            model[off : off + len(data)] = data
        elif op < 0.75:
            size = rng.randrange(0, 6 * BS)
            s.truncate(1, "odd", size)
            if size < len(model):
                del model[size:]
            else:
                model += bytes(size - len(model))
        elif op < 0.8:
            s.fsync(1, datasync=True)
            s.close_all()
            s = store(tmp_path, base)
        off = rng.randrange(0, 7 * BS)
        n = rng.randrange(0, 3 * BS)
        assert s.read(1, "odd", off, n) == bytes(model[off : off + n]), step
    assert s.read(1, "odd", 0, 10 * BS) == bytes(model)


def test_a_failed_fsync_fails_for_good(
    tmp_path: Path, base: FakeBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Contract D5: after an fdatasync error the host may have dropped the pages it could
    not write, so a later fsync that succeeds at the host must still report the loss."""
    s = store(tmp_path, base)
    s.write(1, "rel", 0, b"x" * BS)
    real = os.fdatasync

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(OSError):
        s.fsync(1, datasync=True)
    monkeypatch.setattr(os, "fdatasync", real)
    for _ in range(2):
        with pytest.raises(OSError) as e:
            s.fsync(1, datasync=True)
        assert e.value.errno == 5


def test_fsync_of_an_object_this_process_never_opened_still_syncs(
    tmp_path: Path, base: FakeBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted worker has no open objects: an fsync of one its dead predecessor wrote
    must still fdatasync its files (it used to answer at once without touching the disk)."""
    dead = store(tmp_path, base)
    dead.write(1, "rel", 0, b"x" * BS)  # written, never synced; the worker "dies"
    synced: list[str] = []
    real = os.fdatasync

    def recording(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", recording)
    fresh = store(tmp_path, base)
    fresh.fsync(1, datasync=True)
    assert os.path.realpath(data_path(fresh.dir, 1)) in synced
    assert os.path.realpath(map_path(fresh.dir, 1)) in synced


def test_read_of_an_object_never_made_creates_nothing(tmp_path: Path, base: FakeBase) -> None:
    """A read of an object whose creation failed (a full diff) reads the backup and makes
    no file: on a full diff creating one would fail the read too."""
    s = store(tmp_path, base)
    assert s.read(7, "rel", BS, 2 * BS) == base.files["rel"][BS : 3 * BS]
    assert s.read(8, None, 0, 100) == b""
    assert not os.path.exists(map_path(s.dir, 7))
    assert not os.path.exists(data_path(s.dir, 7))
    assert not os.path.exists(data_path(s.dir, 8))


def test_map_whose_creation_failed_is_not_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BlockMap.create that cannot write its header (ENOSPC) removes the empty file."""
    import errno

    import pbkfs.diff.blockmap as blockmap

    def full(fd: int, data: object, off: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(blockmap, "pwrite_all", full)
    path = str(tmp_path / "3.map")
    with pytest.raises(OSError):
        BlockMap.create(path, "rel", 5 * BS, BS)
    assert not os.path.exists(path)


def test_dirty_objects_past_the_bound_are_synced_early_and_closed(
        tmp_path: Path, base: FakeBase) -> None:
    """A checkpoint dirties more files than the process may hold descriptors for: past
    max_open the least recently used dirty objects are synced early and closed, so the
    descriptors stay bounded, every write and fsync succeeds and every byte is kept."""
    objects = tmp_path / "objects"
    objects.mkdir()
    s = ObjectStore(str(objects), base, BS, max_open=8)
    fds_before = len(os.listdir("/proc/self/fd"))
    for fid in range(1, 41):
        s.write(fid, "rel", BS, bytes([fid]) * BS)
        assert s.open_count() <= 8
    assert len(os.listdir("/proc/self/fd")) - fds_before <= 2 * 8 + 2
    for fid in range(1, 41):
        s.fsync(fid, datasync=False)  # open or closed early: both succeed
    s.close_all()
    s2 = ObjectStore(str(objects), base, BS)
    for fid in range(1, 41):
        assert s2.read(fid, "rel", 0, 3 * BS) == (
            base.files["rel"][:BS] + bytes([fid]) * BS + base.files["rel"][2 * BS:3 * BS])
    s2.close_all()


def test_removal_waits_for_an_early_sync(tmp_path: Path, base: FakeBase) -> None:
    """remove() of an object another thread is syncing early waits for that sync, so its
    descriptors are never closed, and their numbers reused, under that thread."""
    import threading

    s = store(tmp_path, base)
    s.write(5, "rel", 0, b"r" * BS)
    with s._lock:
        obj = s._objs[5]
        obj.busy += 1
        obj.syncing = True  # as _overflow marks it
    remover = threading.Thread(target=s.remove, args=(5,))
    remover.start()
    remover.join(0.3)
    assert remover.is_alive()
    assert os.path.exists(data_path(s.dir, 5))
    with s._lock:
        obj.busy -= 1
        obj.syncing = False
        s._idle.notify_all()
    remover.join(10)
    assert not remover.is_alive()
    assert not os.path.exists(data_path(s.dir, 5))


def test_an_object_being_synced_early_is_used_by_nothing_else(
        tmp_path: Path, base: FakeBase) -> None:
    """An early sync (_sync_and_close) runs in another request's thread, outside the
    object's own request order: a write or fsync of that object waits for it to end, and
    the object counts as needing an fsync meanwhile (a write between its data sync and its
    map sync would make a bit durable before its data; an fsync finding it clean would
    return before the disk did)."""
    import threading

    s = store(tmp_path, base)
    s.write(5, "rel", 0, b"a" * BS)
    with s._lock:
        obj = s._objs[5]
        obj.busy += 1
        obj.syncing = True  # as _overflow marks it
    assert s.needs_sync(5)
    writer = threading.Thread(target=s.write, args=(5, "rel", BS, b"b" * BS))
    syncer = threading.Thread(target=s.fsync, args=(5, True))
    writer.start()
    syncer.start()
    writer.join(0.3)
    syncer.join(0.1)
    assert writer.is_alive() and syncer.is_alive()
    with s._lock:
        obj.syncing = False
        obj.busy -= 1
        s._idle.notify_all()
    writer.join(10)
    syncer.join(10)
    assert not writer.is_alive() and not syncer.is_alive()
    assert s.read(5, "rel", 0, 2 * BS) == b"a" * BS + b"b" * BS
