"""The persisted block map of one diff object: which blocks the diff holds.

A file that came from the backup is copied into the diff block by block, only
where it was written. Which blocks are in the diff is recorded here
explicitly, never inferred from holes in the diff file (a hole and a written
zero page look alike). Layout of `<fid>.map`:

* bytes 0..511 and 512..1023: two header slots (A/B). A header change goes to
  the slot not holding the newest valid copy, so a torn write can only destroy
  the older one; a reader takes the valid slot with the highest sequence.
  Slot: magic, version, block size, sequence, horizon, base size, CRC32C.
* bytes 1024..4095: the backup path the object's base content comes from
  (length, CRC32C, UTF-8), written once at creation; kept for offline tools.
* from 4096: the bitmap, bit b of byte b//8 (LSB first) set when block b is in
  the diff file. A bit is set in memory once the block's data is written to
  the diff file, and reaches the map file only at `sync`, which the owner
  calls after the data file's own fdatasync: the host file system writes back
  in any order, so a bit written earlier could become durable before its data
  and a power loss would leave a hole (zeros) in place of the backup's block.

The *horizon* is the first block that never comes from the backup again: a
truncation lowers it (and it never rises), so blocks at or past it read from
the diff file, whose length is the object's logical size (zeros past what was
written). Content of block b = diff file if bit b is set or b >= horizon, else
the backup's block b.
"""

from __future__ import annotations

import contextlib
import os
import struct

from pbkfs.codecs.crc import crc32c
from pbkfs.fsutil import pwrite_all

MAGIC = b"PBKFSMAP"
VERSION = 1
HEADER_SIZE = 4096
SLOT_SIZE = 512
_SLOT = struct.Struct("<8sIIQQQ")  # magic, version, block_size, seq, horizon, base_size
_CRC = struct.Struct("<I")
_ORIGIN_OFF = 1024
_ORIGIN_HDR = struct.Struct("<II")  # length, crc32c
MAX_ORIGIN = HEADER_SIZE - _ORIGIN_OFF - _ORIGIN_HDR.size


class MapFormatError(Exception):
    """A map file is not a valid block map (both header slots damaged, bad origin)."""


def blocks_for(size: int, block_size: int) -> int:
    """Number of blocks that hold `size` bytes."""
    return -(-size // block_size)


def _pack_slot(seq: int, horizon: int, base_size: int, block_size: int) -> bytes:
    body = _SLOT.pack(MAGIC, VERSION, block_size, seq, horizon, base_size)
    return body + _CRC.pack(crc32c(body))


def _unpack_slot(raw: bytes) -> tuple[int, int, int, int] | None:
    if len(raw) < _SLOT.size + _CRC.size:
        return None
    body = raw[: _SLOT.size]
    (crc,) = _CRC.unpack_from(raw, _SLOT.size)
    if crc32c(body) != crc:
        return None
    magic, version, block_size, seq, horizon, base_size = _SLOT.unpack(body)
    if magic != MAGIC or version != VERSION:
        return None
    return seq, horizon, base_size, block_size


class BlockMap:
    """An open map file plus its bitmap in memory (owned by one worker)."""

    def __init__(
        self,
        fd: int,
        path: str,
        origin: str,
        base_size: int,
        block_size: int,
        horizon: int,
        seq: int,
        bits: bytearray,
    ) -> None:
        self.fd = fd
        self.path = path
        self.origin = origin
        self.base_size = base_size
        self.block_size = block_size
        self.horizon = horizon
        self.seq = seq
        self.bits = bits
        self.dirty = False
        self._pending: tuple[int, int] | None = None  # bitmap bytes [lo, hi) not yet written
        self.on_change: object = None  # set by the owner: callable(byte_index, span) mirror

    # -- creation / loading ---------------------------------------------------

    @classmethod
    def create(cls, path: str, origin: str, base_size: int, block_size: int) -> BlockMap:
        """A fresh map: nothing in the diff, horizon at the end of the backup's data."""
        raw = origin.encode()
        if len(raw) > MAX_ORIGIN:
            raise MapFormatError(f"{path}: origin path longer than {MAX_ORIGIN} bytes")
        horizon = blocks_for(base_size, block_size)
        header = bytearray(HEADER_SIZE)
        header[0:SLOT_SIZE] = _pack_slot(1, horizon, base_size, block_size).ljust(SLOT_SIZE, b"\0")
        header[_ORIGIN_OFF : _ORIGIN_OFF + _ORIGIN_HDR.size + len(raw)] = (
            _ORIGIN_HDR.pack(len(raw), crc32c(raw)) + raw
        )
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            pwrite_all(fd, header, 0)
        except BaseException:
            # No half-made map left behind (a full diff): a read must not take it for one.
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        bm = cls(fd, path, origin, base_size, block_size, horizon, 1, bytearray())
        bm.dirty = True
        return bm

    @classmethod
    def load(cls, path: str, writable: bool = True) -> BlockMap:
        """Open an existing map; raises MapFormatError if it cannot be trusted."""
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
        fd = os.open(path, flags)
        try:
            data = b""
            chunks = []
            off = 0
            while True:
                chunk = os.pread(fd, 1 << 20, off)
                if not chunk:
                    break
                chunks.append(chunk)
                off += len(chunk)
            data = b"".join(chunks)
            return cls._parse(fd, path, data)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def _parse(cls, fd: int, path: str, data: bytes) -> BlockMap:
        slots = [_unpack_slot(data[i * SLOT_SIZE : (i + 1) * SLOT_SIZE]) for i in (0, 1)]
        valid = [s for s in slots if s is not None]
        if not valid:
            raise MapFormatError(f"{path}: no valid header slot")
        seq, horizon, base_size, block_size = max(valid)
        if len(data) < _ORIGIN_OFF + _ORIGIN_HDR.size:
            raise MapFormatError(f"{path}: header is truncated")
        n, crc = _ORIGIN_HDR.unpack_from(data, _ORIGIN_OFF)
        raw = data[_ORIGIN_OFF + _ORIGIN_HDR.size : _ORIGIN_OFF + _ORIGIN_HDR.size + n]
        if n > MAX_ORIGIN or len(raw) != n or crc32c(raw) != crc:
            raise MapFormatError(f"{path}: origin record is damaged")
        bits = bytearray(data[HEADER_SIZE:])
        return cls(fd, path, raw.decode(), base_size, block_size, horizon, seq, bits)

    # -- queries ---------------------------------------------------------------

    def has(self, block: int) -> bool:
        """Is block `block` in the diff file (explicitly or past the horizon)?"""
        if block >= self.horizon:
            return True
        i = block >> 3
        return i < len(self.bits) and bool(self.bits[i] & (1 << (block & 7)))

    def count(self) -> int:
        """Blocks below the horizon held by the diff."""
        total = 0
        for b in range(min(self.horizon, len(self.bits) * 8)):
            if self.bits[b >> 3] & (1 << (b & 7)):
                total += 1
        return total

    # -- updates ---------------------------------------------------------------

    def mark(self, first: int, last: int) -> None:
        """Record blocks first..last (inclusive) as in the diff (data already written)."""
        lo, hi = first >> 3, last >> 3
        if hi >= len(self.bits):
            self.bits.extend(bytes(hi + 1 - len(self.bits)))
        changed = False
        for b in range(first, last + 1):
            m = 1 << (b & 7)
            if not self.bits[b >> 3] & m:
                self.bits[b >> 3] |= m
                changed = True
        if not changed:
            return
        # Kept in memory (and mirrored to shared memory) until `sync`: see the module notes.
        p = self._pending
        self._pending = (lo, hi + 1) if p is None else (min(p[0], lo), max(p[1], hi + 1))
        self.dirty = True
        if callable(self.on_change):
            self.on_change(lo, hi + 1)

    def adopt(self, bits: bytes) -> bool:
        """OR in bits an earlier process of this worker set and never synced (their data is
        in the data file: a bit is mirrored only after its block was written). Pending
        like any new bit; True if anything was new."""
        if len(bits) > len(self.bits):
            self.bits.extend(bytes(len(bits) - len(self.bits)))
        lo = hi = -1
        for i, byte in enumerate(bits):
            if byte & ~self.bits[i]:
                self.bits[i] |= byte
                lo = i if lo < 0 else lo
                hi = i + 1
        if lo < 0:
            return False
        p = self._pending
        self._pending = (lo, hi) if p is None else (min(p[0], lo), max(p[1], hi))
        self.dirty = True
        return True

    def set_horizon(self, horizon: int) -> None:
        """Lower the horizon (it never rises): the backup's blocks >= it are gone for good."""
        if horizon >= self.horizon:
            return
        self.seq += 1
        slot = self.seq % 2
        os.pwrite(
            self.fd,
            _pack_slot(self.seq, horizon, self.base_size, self.block_size),
            slot * SLOT_SIZE,
        )
        self.horizon = horizon
        self.dirty = True
        if callable(self.on_change):
            self.on_change(0, 0)

    def clamp(self, size: int) -> None:
        """After a crash the data file may be shorter than the horizon says: trust the file.

        (A truncate shortens the data file before it lowers the horizon, and the
        horizon is never above the blocks the logical size spans.)
        """
        h = blocks_for(size, self.block_size)
        if h < self.horizon:
            self.set_horizon(h)

    def sync(self) -> None:
        """Make the map durable. Call only after the data file's own fdatasync."""
        if not self.dirty:
            return
        p = self._pending
        if p is not None:
            lo, hi = p
            pwrite_all(self.fd, memoryview(self.bits)[lo:hi], HEADER_SIZE + lo)
            self._pending = None
        os.fdatasync(self.fd)
        self.dirty = False

    def unsynced_bits(self) -> bool:
        """Are there bits only in memory (lost if this process dies before `sync`)?"""
        return self._pending is not None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
