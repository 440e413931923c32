"""Copying a backup's WAL segment into the diff without fetching its zero tail.

A stream backup keeps each WAL segment whole (16 MB, stored uncompressed), but
pg_probackup's WAL receiver writes into a zero-filled file: past the last record
it received, the segment is zeros. Reading all of it costs 16 MB per segment
from an object store at the first mount, most of it zeros.

The listed CRC of the file decides instead: the copy fetches a prefix (256 KiB,
then 4 times more each step) and stops as soon as the CRC of "prefix + zeros to
the file's size" equals the CRC the backup lists for the file; then the rest is
zeros, allocated (not written) with posix_fallocate so PostgreSQL's later WAL
writes into it never meet a full disk. Without a listed CRC, or when no prefix
matches, every byte is fetched. The file's bytes are the backup's either way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

FIRST_PREFIX = 256 * 1024
GROWTH = 4
READ_CHUNK = 1 << 20
_ZEROS = memoryview(bytes(1 << 20))

Checksum = Callable[[bytes, int], int]


class WalSource(Protocol):
    def read(self, path: str, offset: int, length: int) -> bytes: ...

    def content_crc(self, path: str) -> tuple[Checksum, int] | None: ...


def crc_with_zeros(fn: Checksum, value: int, n: int) -> int:
    """`fn` continued over `n` zero bytes."""
    while n > 0:
        k = min(n, len(_ZEROS))
        value = fn(_ZEROS[:k], value)  # type: ignore[arg-type]  # a buffer, not copied
        n -= k
    return value


def fetch_checked(source: WalSource, path: str, size: int) -> tuple[bytes, bool]:
    """The bytes of `path` that are not its zero tail, and whether a tail was left out
    (its length is `size` minus the bytes returned)."""
    listed = source.content_crc(path)
    got = bytearray()
    value = 0
    want = min(size, FIRST_PREFIX) if listed is not None else size
    while True:
        while len(got) < want:
            chunk = source.read(path, len(got), min(READ_CHUNK, want - len(got)))
            if not chunk:
                return bytes(got), False  # shorter than listed: as the reads say
            if listed is not None:
                value = listed[0](chunk, value)
            got += chunk
        if len(got) >= size or listed is None:
            return bytes(got), False
        fn, crc = listed
        if crc_with_zeros(fn, value, size - len(got)) == crc:
            return bytes(got), True
        want = min(size, want * GROWTH)


def copy_to(source: WalSource, path: str, size: int, dst: str, mode: int) -> int:
    """Write file `path` of the backup to `dst`, durable; the bytes fetched."""
    data, zero_tail = fetch_checked(source, path, size)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if zero_tail:
            try:
                os.posix_fallocate(fd, len(data), size - len(data))
            except OSError:
                os.ftruncate(fd, size)  # a file system without fallocate: a hole reads zeros
        os.fsync(fd)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return len(data)
