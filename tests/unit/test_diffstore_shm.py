"""Shared-memory block maps: what the frontend reads is what the worker's map says."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbkfs.diff.blockmap import BlockMap
from pbkfs.diff.objects import ObjectStore, map_path
from pbkfs.diff.sharedmaps import Region, Segment

BS = 8192


class Base:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def read(self, path: str, offset: int, length: int) -> bytes:
        return self.files[path][offset : offset + length]

    def base_size(self, path: str) -> int:
        return len(self.files[path])


@pytest.fixture
def seg() -> Iterator[Segment]:
    s = Segment.create(f"/pbkfs-t-{uuid.uuid4().hex[:8]}", 2, BS, region_size=1 << 20,
                       slots=64)
    try:
        yield s
    finally:
        s.close()
        s.unlink()


def test_reader_sees_the_workers_map(tmp_path: Path, seg: Segment) -> None:
    base = Base({"rel": random.Random(1).randbytes(4000 * BS)})
    store = ObjectStore(str(tmp_path), base, BS, Region(seg, 1))
    reader = Segment.attach(seg.name)
    try:
        obj = store.write(7, "rel", 5 * BS, b"x" * BS)
        slot = obj.slot
        assert slot >= 0
        assert reader.covered(1, slot, 7, 5, 5)
        assert not reader.covered(1, slot, 7, 4, 5)
        assert not reader.covered(1, slot, 8, 5, 5)  # another object's id never matches
        # growth past the first capacity moves the bitmap; the reply's slot follows it
        obj = store.write(7, "rel", 3999 * BS, b"y" * BS)
        assert reader.covered(1, obj.slot, 7, 3999, 3999)
        assert reader.covered(1, obj.slot, 7, 5, 5)
        # a truncation lowers the horizon: past it everything is in the diff
        obj = store.truncate(7, "rel", 10 * BS)
        assert reader.covered(1, obj.slot, 7, 10, 20)
        assert not reader.covered(1, obj.slot, 7, 6, 6)
        bm = BlockMap.load(map_path(str(tmp_path), 7), writable=False)
        assert bm.horizon == 10 and bm.has(5) and not bm.has(6)
        bm.close()
    finally:
        reader.close()
        store.close_all()


def test_slot_survives_eviction_and_is_freed_by_remove(tmp_path: Path, seg: Segment) -> None:
    base = Base({f"f{i}": bytes(4 * BS) for i in range(10)})
    store = ObjectStore(str(tmp_path), base, BS, Region(seg, 0), max_open=2)
    slots = {}
    for i in range(10):
        obj = store.write(i + 1, f"f{i}", 0, b"a" * BS)
        store.fsync(i + 1, True)  # clean: may be closed to save descriptors
        slots[i + 1] = obj.slot
    assert store.open_count() <= 3
    for fid, slot in slots.items():  # reopened objects keep their slot
        assert seg.covered(0, slot, fid, 0, 0)
        store.read(fid, f"f{fid - 1}", 0, 10)
        assert store.write(fid, f"f{fid - 1}", BS, b"b").slot == slot
    used = {s for s, *_ in seg.entries(0)}
    assert used == set(slots.values())
    for fid in slots:
        store.remove(fid)
    assert seg.entries(0) == []
    store.close_all()


def test_stale_segments_of_dead_mounts_are_removed() -> None:
    import posix_ipc

    from pbkfs.diff.sharedmaps import remove_stale, segment_name

    dead = segment_name(2**22 + 12345, uuid.uuid4().hex[:8])  # no such pid
    live = segment_name(os.getpid(), uuid.uuid4().hex[:8])  # the test runner: not pbkfs
    mine = Segment.create(dead, 1, BS, region_size=1 << 16, slots=4)
    other = Segment.create(live, 1, BS, region_size=1 << 16, slots=4)
    try:
        removed = remove_stale()
        assert dead.lstrip("/") in removed
        with pytest.raises(posix_ipc.ExistentialError):
            Segment.attach(dead)
    finally:
        for s in (mine, other):
            s.close()
            s.unlink()


def test_a_new_process_adopts_the_unsynced_bits_of_the_dead_one(
    tmp_path: Path, seg: Segment
) -> None:
    """Contract E3: bits a worker set but never synced are in its region; the next process
    of that worker adopts them, so the blocks read as written, and its fsync makes them
    durable. A bitmap that grows is written to its new place before the old is released."""
    objects = tmp_path / "objects"
    objects.mkdir()
    base = Base({"rel": random.Random(9).randbytes(4000 * BS)})
    dead = ObjectStore(str(objects), base, BS, Region(seg, 0))
    dead.write(1, "rel", 2 * BS, b"a" * BS)
    dead.fsync(1, datasync=True)
    dead.write(1, "rel", 5 * BS, b"b" * BS)  # answered, never synced
    dead.write(1, "rel", 3999 * BS, b"c" * BS)  # grows the bitmap: a new place in the heap
    region = Region(seg, 0)
    inherited = region.inherited()
    assert list(inherited) == [1]
    region.reset()
    fresh = ObjectStore(str(objects), base, BS, region, inherited=inherited)
    assert fresh.read(1, "rel", 5 * BS, BS) == b"b" * BS
    assert fresh.read(1, "rel", 3999 * BS, BS) == b"c" * BS
    assert fresh.read(1, "rel", 4 * BS, BS) == base.files["rel"][4 * BS : 5 * BS]
    fresh.fsync(1, datasync=True)
    fresh.close_all()
    bm = BlockMap.load(map_path(str(objects), 1))
    assert bm.has(2) and bm.has(5) and bm.has(3999) and not bm.has(4)


def test_a_torn_or_half_written_entry_is_never_covered(seg: Segment) -> None:
    """An entry caught while the worker rewrites it (its id written, the rest not yet: heap
    offset and horizon still zero) must not read as "everything past horizon 0 is in the
    diff": that would serve a data file's holes, zeros, in place of backup blocks."""
    from pbkfs.diff.sharedmaps import ENTRY, table_offset

    region = Region(seg, 0)
    slot = region.publish(-1, 9, bytes([0b1]), horizon=100)
    assert seg.covered(0, slot, 9, 0, 0) and not seg.covered(0, slot, 9, 1, 1)
    pos = table_offset(0, seg.region_size) + slot * ENTRY.size
    ENTRY.pack_into(seg.buf, pos, 9, 0, 0, 0)  # the id first, nothing else yet
    assert not seg.covered(0, slot, 9, 1, 1)
    assert not seg.covered(0, slot, 9, 200, 200)


def test_space_reused_after_a_restart_never_shows_the_old_bits(seg: Segment) -> None:
    """A new worker process resets its region and allocates bitmap space from the start of
    the heap again: space that held another object's bits must read as zeros (a stale bit
    made the frontend read a hole of the data file: zeros in place of the backup's block,
    seen as "unexpected zero page" after a worker was killed under load)."""
    old = Region(seg, 0)
    old.publish(-1, 111, b"\xff" * 40, 1000)  # the dead process: many blocks in the diff
    new = Region(seg, 0)
    new.inherited()
    new.reset()
    slot = new.publish(-1, 74, b"", 28)  # an object with no block in the diff yet
    assert slot >= 0
    for block in range(28):
        assert not seg.covered(0, slot, 74, block, block), block
    slot = new.update(slot, 74, b"\x04", 0, 1, 28)  # block 2 written
    assert seg.covered(0, slot, 74, 2, 2) and not seg.covered(0, slot, 74, 16, 16)
    # space freed and reused within one process is zeroed as well
    new.release(slot)
    again = new.publish(-1, 75, b"", 28)
    assert not any(seg.covered(0, again, 75, b, b) for b in range(28))


def test_objects_past_the_slot_table_are_made_durable_instead(tmp_path: Path) -> None:
    """More objects than the worker's slot table holds: those without a slot have their
    written blocks made durable at once (a worker's death would lose bits only shared
    memory knew), and a later process (inherited bits, then reset) reads every byte."""
    base = Base({"rel": random.Random(2).randbytes(8 * BS)})
    s = Segment.create(f"/pbkfs-t-{uuid.uuid4().hex[:8]}", 1, BS, region_size=1 << 20,
                       slots=4)
    try:
        region = Region(s, 0)
        store = ObjectStore(str(tmp_path), base, BS, region)
        slots = [store.write(fid, "rel", fid % 8 * BS, bytes([fid]) * BS).slot
                 for fid in range(1, 11)]
        assert sum(slot >= 0 for slot in slots) == 4 and slots[4:] == [-1] * 6
        for fid in range(1, 11):  # without a slot, the block's bit is on disk already
            on_disk = BlockMap.load(map_path(str(tmp_path), fid), writable=False)
            assert on_disk.has(fid % 8) == (fid > 4), fid
            on_disk.close()
        # a worker killed now: the next one adopts what shared memory had, then starts afresh
        inherited = region.inherited()
        region.reset()
        assert s.entries(0) == []
        again = ObjectStore(str(tmp_path), base, BS, Region(s, 0), inherited=inherited)
        for fid in range(1, 11):
            want = bytearray(base.files["rel"])
            want[fid % 8 * BS:(fid % 8 + 1) * BS] = bytes([fid]) * BS
            assert again.read(fid, "rel", 0, 8 * BS) == bytes(want)
        again.close_all()
        store.close_all()
    finally:
        s.close()
        s.unlink()
