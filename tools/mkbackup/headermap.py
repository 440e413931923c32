"""page_header_map: one level-1 zlib stream of BackupPageHeader2 records per stored datafile.

The regions are appended in the order files finish (as pg_probackup does with
-j > 1); each file's entry records where its region is (hdr_off, hdr_size)
and the CRC32C of the uncompressed records (hdr_crc). The file is created
only when the first region arrives, so a backup with no stored page has none.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from pbkfs.codecs.crc import crc32c
from pbkfs.fsutil import write_all


def pack_region(raw_headers: bytes) -> tuple[bytes, int]:
    """(zlib level-1 stream, CRC32C of the raw records) for one file's headers."""
    return zlib.compress(raw_headers, 1), crc32c(raw_headers)


class HeaderMapWriter:
    """Append-only writer of `<backup>/page_header_map`; used from one thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._fd: int | None = None

    def append(self, region: bytes) -> int:
        """Write `region`, return its offset (hdr_off)."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        off = self.offset
        write_all(self._fd, region)
        self.offset += len(region)
        return off

    def close(self, sync: bool = True) -> None:
        if self._fd is not None:
            if sync:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
