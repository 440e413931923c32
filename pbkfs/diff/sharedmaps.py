"""Shared-memory block maps of a live mount (posix_ipc), one segment per mount.

The segment is a cache of the persisted maps (`blockmap.py`), published so the
frontend can serve reads of blocks already in the diff without a worker round
trip, and so tools can inspect a live mount. Each worker owns one region and is
its only writer; everyone else only reads.

Layout (little-endian):

* offset 0, 4096 bytes: segment header: magic, version, workers, region size,
  block size, slots per region.
* region w at 4096 + w * region_size:
  * 64 bytes: region header (slots in use high-water mark, heap bytes used);
  * `slots` entries of 32 bytes: fid (0 = free), heap offset (absolute in the
    segment), bitmap capacity in bytes, horizon;
  * the heap: one bitmap per object, same bit order as the map file.
"""

from __future__ import annotations

import mmap
import os
import struct

import posix_ipc

MAGIC = b"PBKFSSHM"
VERSION = 1
SEG_HEADER = struct.Struct("<8sIIQII")  # magic, version, workers, region_size, block, slots
SEG_HEADER_SIZE = 4096
REGION_HEADER = struct.Struct("<QQ")  # slots high-water, heap used
REGION_HEADER_SIZE = 64
ENTRY = struct.Struct("<QQQQ")  # fid, heap offset, capacity bytes, horizon
DEFAULT_SLOTS = 65536  # objects per worker (a 2 MiB table); past it new blocks are fsynced
DEFAULT_REGION = 64 << 20
MIN_CAPACITY = 64


def segment_name(pid: int, token: str) -> str:
    """`/pbkfs-<pid of the mount process>-<token>`: the pid tells a stale segment."""
    return f"/pbkfs-{pid}-{token}"


def remove_stale(shm_dir: str = "/dev/shm") -> list[str]:
    """Unlink segments whose mount process is gone (it was killed before cleaning up)."""
    removed: list[str] = []
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return removed
    for name in names:
        parts = name.split("-")
        if len(parts) != 3 or parts[0] != "pbkfs" or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                alive = b"pbkfs" in f.read()
        except OSError:
            alive = False
        if not alive:
            try:
                posix_ipc.unlink_shared_memory("/" + name)
                removed.append(name)
            except posix_ipc.ExistentialError:
                pass
    return removed


def table_offset(worker: int, region_size: int) -> int:
    return SEG_HEADER_SIZE + worker * region_size + REGION_HEADER_SIZE


class Segment:
    """A mapped segment (creator or reader)."""

    def __init__(self, name: str, buf: mmap.mmap, created: bool) -> None:
        self.name = name
        self.buf = buf
        self.created = created
        magic, version, workers, region_size, block_size, slots = SEG_HEADER.unpack_from(buf, 0)
        if magic != MAGIC or version != VERSION:
            raise ValueError(f"shared memory {name}: not a pbkfs block-map segment")
        self.workers = workers
        self.region_size = region_size
        self.block_size = block_size
        self.slots = slots

    @classmethod
    def create(
        cls,
        name: str,
        workers: int,
        block_size: int,
        region_size: int = DEFAULT_REGION,
        slots: int = DEFAULT_SLOTS,
    ) -> Segment:
        size = SEG_HEADER_SIZE + workers * region_size
        mem = posix_ipc.SharedMemory(name, flags=posix_ipc.O_CREX, mode=0o600, size=size)
        try:
            buf = mmap.mmap(mem.fd, size)
        finally:
            mem.close_fd()
        SEG_HEADER.pack_into(buf, 0, MAGIC, VERSION, workers, region_size, block_size, slots)
        return cls(name, buf, True)

    @classmethod
    def attach(cls, name: str, writable: bool = False) -> Segment:
        mem = posix_ipc.SharedMemory(name)
        try:
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            buf = mmap.mmap(mem.fd, mem.size, prot=prot)
        finally:
            mem.close_fd()
        return cls(name, buf, False)

    def close(self) -> None:
        try:
            self.buf.close()
        except BufferError:
            pass

    def unlink(self) -> None:
        try:
            posix_ipc.unlink_shared_memory(self.name)
        except posix_ipc.ExistentialError:
            pass

    # -- reading (frontend, tools) ----------------------------------------------

    def entry(self, worker: int, slot: int) -> tuple[int, int, int, int]:
        """(fid, heap offset, capacity bytes, horizon) of a slot."""
        return ENTRY.unpack_from(
            self.buf, table_offset(worker, self.region_size) + slot * ENTRY.size
        )

    def covered(self, worker: int, slot: int, fid: int, first: int, last: int) -> bool:
        """Are blocks first..last of `fid` all in the diff (bit set or past the horizon)?

        The owning worker rewrites entries and reuses bitmap space while this runs (it
        releases an evicted object's slot and publishes another object, or the same one
        again, in its place). So the entry must lie inside the region's heap, and it is
        read again after the bits: a changed entry (torn, released, reused) is a miss, and
        the read goes to the worker. Never a guess: a wrong "covered" reads a hole of the
        data file, zeros in place of the backup's block."""
        table = table_offset(worker, self.region_size)
        pos = table + slot * ENTRY.size
        entry = ENTRY.unpack_from(self.buf, pos)
        efid, off, cap, horizon = entry
        if efid != fid:
            return False
        heap = table + self.slots * ENTRY.size
        if off < heap or off + cap > table - REGION_HEADER_SIZE + self.region_size:
            return False
        top = min(last, horizon - 1)
        if first <= top:
            if (top >> 3) >= cap:
                return False
            bits = self.buf[off + (first >> 3) : off + (top >> 3) + 1]
            base = first & ~7
            for b in range(first, top + 1):
                i = b - base
                if not bits[i >> 3] & (1 << (i & 7)):
                    return False
        return ENTRY.unpack_from(self.buf, pos) == entry

    def entries(self, worker: int) -> list[tuple[int, int, int, int, int]]:
        """Every used slot of a worker's region: (slot, fid, off, cap, horizon)."""
        base = SEG_HEADER_SIZE + worker * self.region_size
        high, _used = REGION_HEADER.unpack_from(self.buf, base)
        out = []
        for s in range(high):
            fid, off, cap, horizon = self.entry(worker, s)
            if fid:
                out.append((s, fid, off, cap, horizon))
        return out


class Region:
    """A worker's writable part of the segment: slot table and bitmap heap."""

    def __init__(self, seg: Segment, worker: int) -> None:
        self.seg = seg
        self.worker = worker
        self.base = SEG_HEADER_SIZE + worker * seg.region_size
        self.table = self.base + REGION_HEADER_SIZE
        self.heap = self.table + seg.slots * ENTRY.size
        self.end = self.base + seg.region_size
        self.high, used = REGION_HEADER.unpack_from(seg.buf, self.base)
        self.bump = self.heap + used
        self.free_slots: list[int] = []
        self.free_space: list[tuple[int, int]] = []  # (offset, capacity)

    def inherited(self) -> dict[int, bytes]:
        """The bitmaps an earlier process of this worker published (before `reset`): the
        blocks it had written, synced or not. Slots of one object are merged (a grown
        bitmap is written to its new place before the old slot is released)."""
        out: dict[int, bytearray] = {}
        buf = self.seg.buf
        for _slot, fid, off, cap, _horizon in self.seg.entries(self.worker):
            if not (self.heap <= off and off + cap <= self.end):
                continue  # torn entry: nothing to trust in it
            bits = bytes(buf[off : off + cap])
            have = out.setdefault(fid, bytearray(len(bits)))
            if len(have) < len(bits):
                have.extend(bytes(len(bits) - len(have)))
            for i, byte in enumerate(bits):
                have[i] |= byte
        return {fid: bytes(bits) for fid, bits in out.items()}

    def reset(self) -> None:
        """Start the region afresh (a new worker process: the old one's maps are gone)."""
        buf = self.seg.buf
        # Entries at or past the high-water mark were never written (it is raised before
        # an entry is): zero only up to it, so a mostly unused table is never touched.
        high, _used = REGION_HEADER.unpack_from(buf, self.base)
        end = self.table + min(high, self.seg.slots) * ENTRY.size
        buf[self.base : end] = bytes(end - self.base)
        self.high = 0
        self.bump = self.heap
        self.free_slots.clear()
        self.free_space.clear()
        self._header()

    def _header(self) -> None:
        REGION_HEADER.pack_into(self.seg.buf, self.base, self.high, self.bump - self.heap)

    def _alloc_space(self, need: int) -> int | None:
        """Bitmap space of the next power of two >= `need`, zeroed: freed space held another
        object's bits, and so does the heap of an earlier process of this worker (`reset`
        clears the slot table, not the heap). A stale bit there would make the frontend
        read a hole of the data file: zeros in place of the backup's block."""
        cap = MIN_CAPACITY
        while cap < need:
            cap <<= 1
        for i, (off, c) in enumerate(self.free_space):
            if c == cap:
                del self.free_space[i]
                self.seg.buf[off : off + cap] = bytes(cap)
                return off
        if self.bump + cap > self.end:
            return None
        off = self.bump
        self.bump += cap
        self._header()
        self.seg.buf[off : off + cap] = bytes(cap)
        return off

    @staticmethod
    def _cap(need: int) -> int:
        cap = MIN_CAPACITY
        while cap < need:
            cap <<= 1
        return cap

    def publish(self, slot: int, fid: int, bits: bytes | bytearray, horizon: int) -> int:
        """Create or refresh the slot of `fid` with a whole bitmap; returns the slot or -1."""
        buf = self.seg.buf
        old = slot
        if slot >= 0:
            efid, off, cap, _h = self.seg.entry(self.worker, slot)
            if efid == fid and cap >= len(bits):
                buf[off : off + len(bits)] = bits
                ENTRY.pack_into(buf, self.table + slot * ENTRY.size, fid, off, cap, horizon)
                return slot
        # The new place is filled before the old one is released: a process killed in
        # between leaves both, never neither (see `inherited`).
        need = max(len(bits), 1)
        got = self._alloc_space(need)
        if got is None:
            self.release(old)
            return -1
        off = got
        cap = self._cap(need)
        buf[off : off + len(bits)] = bits
        if self.free_slots:
            slot = self.free_slots.pop()
        elif self.high < self.seg.slots:
            slot = self.high
            self.high += 1
            self._header()
        else:
            self.free_space.append((off, cap))
            self.release(old)
            return -1
        ENTRY.pack_into(buf, self.table + slot * ENTRY.size, fid, off, cap, horizon)
        if old >= 0 and old != slot:
            self.release(old)
        return slot

    def update(
        self, slot: int, fid: int, bits: bytes | bytearray, lo: int, hi: int, horizon: int
    ) -> int:
        """Copy bitmap bytes lo..hi-1 and the horizon; grows (moves) the bitmap if needed."""
        if slot < 0:
            return self.publish(slot, fid, bits, horizon)
        efid, off, cap, h = self.seg.entry(self.worker, slot)
        if efid != fid or hi > cap:
            return self.publish(slot, fid, bits, horizon)
        if hi > lo:
            self.seg.buf[off + lo : off + hi] = bits[lo:hi]
        if h != horizon:
            ENTRY.pack_into(self.seg.buf, self.table + slot * ENTRY.size, fid, off, cap, horizon)
        return slot

    def release(self, slot: int) -> None:
        if slot < 0:
            return
        efid, off, cap, _h = self.seg.entry(self.worker, slot)
        ENTRY.pack_into(self.seg.buf, self.table + slot * ENTRY.size, 0, 0, 0, 0)
        if efid:
            self.free_space.append((off, cap))
            self.free_slots.append(slot)
