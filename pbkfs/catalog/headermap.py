"""page_header_map: the per-file page index of a backup (format spec §3.4).

Each datafile with stored pages owns a region of `page_header_map`: a zlib
stream of (n_headers + 1) BackupPageHeader2 records of 24 bytes. It gives
O(1)/O(log n) access to any stored block without scanning the page stream.
"""

from __future__ import annotations

import bisect
import struct
import zlib
from array import array

from pbkfs.catalog.content import FileEntry
from pbkfs.codecs.crc import crc32c
from pbkfs.errors import CatalogError, CorruptionError
from pbkfs.storage.location import Location, open_handle, read_range

HEADER2 = struct.Struct("<QiiH6x")
INLINE_HEADER = struct.Struct("<ii")


class PageIndex:
    """Stored blocks of one file in one backup: block -> (offset, length, lsn, checksum)."""

    __slots__ = ("blocks", "pos", "lsn", "checksum", "_dense")

    def __init__(self, blocks: array, pos: array, lsn: array, checksum: array) -> None:
        self.blocks = blocks  # ascending block numbers within the segment
        self.pos = pos  # len(blocks) + 1 offsets; pos[i] = inline header of record i
        self.lsn = lsn
        self.checksum = checksum
        n = len(blocks)
        self._dense = n > 0 and blocks[0] == 0 and blocks[n - 1] == n - 1

    def __len__(self) -> int:
        return len(self.blocks)

    def find(self, block: int) -> int:
        """Record number holding `block`, or -1."""
        if self._dense:
            return block if 0 <= block < len(self.blocks) else -1
        i = bisect.bisect_left(self.blocks, block)
        if i < len(self.blocks) and self.blocks[i] == block:
            return i
        return -1

    def record(self, i: int) -> tuple[int, int]:
        """(payload offset, payload length) of record i (after its 8-byte inline header)."""
        start = self.pos[i]
        return start + INLINE_HEADER.size, self.pos[i + 1] - start - INLINE_HEADER.size

    @property
    def weight(self) -> int:
        """Rough memory cost in bytes, for the bounded cache."""
        return 26 * len(self.blocks) + 64


def read_region(map_path: Location, entry: FileEntry, block_size: int) -> PageIndex:
    """Decode and check the page_header_map region of `entry`."""
    where = f"{map_path} (region of {entry.path})"
    try:
        blob = read_range(map_path, entry.hdr_off, entry.hdr_size)
    except OSError as exc:
        raise CatalogError(map_path, f"cannot read page header map: {exc.strerror}") from exc
    if len(blob) != entry.hdr_size:
        raise CorruptionError(where, f"region {entry.hdr_off}+{entry.hdr_size} runs past the end "
                              "of page_header_map")
    try:
        raw = zlib.decompress(blob)
    except zlib.error as exc:
        raise CorruptionError(where, f"page header map does not decompress: {exc}") from None
    want = (entry.n_headers + 1) * HEADER2.size
    if len(raw) != want:
        raise CorruptionError(where, f"page header map holds {len(raw)} bytes, expected {want} "
                              f"for {entry.n_headers} pages")
    actual = crc32c(raw)
    if actual != entry.hdr_crc:
        raise CorruptionError(where, f"page header map CRC mismatch: listed {entry.hdr_crc}, "
                              f"computed {actual}")
    return _index_from_records(raw, entry, where, block_size)


def _index_from_records(raw: bytes, entry: FileEntry, where: str, block_size: int) -> PageIndex:
    blocks, pos, lsn, checksum = array("i"), array("q"), array("Q"), array("H")
    prev_block = -1
    for n, (rec_lsn, block, rec_pos, rec_checksum) in enumerate(HEADER2.iter_unpack(raw)):
        pos.append(rec_pos)
        if n == entry.n_headers:
            break  # the sentinel: only `pos` means something
        if block <= prev_block:
            raise CorruptionError(where, f"page header map blocks not ascending at record {n}")
        prev_block = block
        blocks.append(block)
        lsn.append(rec_lsn)
        checksum.append(rec_checksum)
    if pos[0] != 0:
        raise CorruptionError(where, f"first page starts at {pos[0]}, not 0")
    for i in range(len(blocks)):
        length = pos[i + 1] - pos[i] - INLINE_HEADER.size
        if not 1 <= length <= block_size:
            raise CorruptionError(where, f"page record {i} (block {blocks[i]}) has length {length}",
                                  block=blocks[i])
    if pos[len(blocks)] != entry.size:
        raise CorruptionError(where, f"page stream ends at {pos[len(blocks)]} but the file is "
                              f"listed with size {entry.size}")
    return PageIndex(blocks, pos, lsn, checksum)


def scan_inline_headers(data_path: Location, entry: FileEntry, block_size: int) -> PageIndex:
    """Index a page stream by its inline headers (for files listed without a map region)."""
    blocks, pos, lsn, checksum = array("i"), array("q"), array("Q"), array("H")
    offset, prev = 0, -1
    try:
        f = open_handle(data_path)
        try:
            while True:
                head = f.pread(INLINE_HEADER.size, offset)
                if not head:
                    break
                if len(head) != INLINE_HEADER.size:
                    raise CorruptionError(data_path, f"truncated page header at offset {offset}")
                block, size = INLINE_HEADER.unpack(head)
                if not 1 <= size <= block_size or block <= prev:
                    raise CorruptionError(data_path, f"bad page header at offset {offset} "
                                          f"(block {block}, size {size})", block=block)
                blocks.append(block)
                pos.append(offset)
                lsn.append(0)
                checksum.append(0)
                prev = block
                offset += INLINE_HEADER.size + size
        finally:
            f.close()
    except OSError as exc:
        raise CatalogError(data_path, f"cannot read: {exc.strerror}") from exc
    pos.append(offset)
    return PageIndex(blocks, pos, lsn, checksum)
