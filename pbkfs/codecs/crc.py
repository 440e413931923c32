"""CRC32C (Castagnoli), the checksum of every pg_probackup metadata and file CRC.

Taken from the `crc32c` C library: a pure-Python CRC runs at about 8 MB/s.
"""

from __future__ import annotations

import zlib

import crc32c as _crc32c


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC32C of `data`, continuing from `value` (0 to start)."""
    return _crc32c.crc32c(data, value)


def crc32(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """zlib/IEEE CRC-32, used by pg_probackup 2.0.22-2.0.24 for file CRCs."""
    return zlib.crc32(data, value)
