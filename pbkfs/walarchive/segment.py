"""Is this the WAL segment it claims to be? (the first page's XLogLongPageHeaderData)

Every segment starts with a long page header: xlp_magic (uint16, one value
per PostgreSQL major version), xlp_info (uint16, XLP_LONG_HEADER set),
xlp_tli (uint32), xlp_pageaddr (uint64, the LSN of the segment start),
xlp_rem_len (uint32), padding, then xlp_sysid (uint64), xlp_seg_size and
xlp_xlog_blcksz (uint32 each); native byte order (little-endian assumed, like
the rest of the catalog). A renamed, truncated or foreign file fails here
before PostgreSQL ever sees it.
"""

from __future__ import annotations

import struct

from pbkfs.errors import CorruptionError

# XLOG_PAGE_MAGIC of each PostgreSQL major version (src/include/access/xlog_internal.h).
XLOG_PAGE_MAGIC = {
    "9.5": 0xD087, "9.6": 0xD093, "10": 0xD097, "11": 0xD098, "12": 0xD101,
    "13": 0xD106, "14": 0xD10D, "15": 0xD110, "16": 0xD113, "17": 0xD116,
}
XLP_FIRST_IS_CONTRECORD = 0x0001
XLP_LONG_HEADER = 0x0002
XLP_ALL_FLAGS = 0x000F
LONG_HEADER = struct.Struct("<HHIQI4xQII")  # 40 bytes


def page_magic(server_version: str | None) -> int | None:
    """The magic a segment of `server_version` (backup.control's `server-version`) carries."""
    if not server_version:
        return None
    return XLOG_PAGE_MAGIC.get(server_version.strip())


def check_segment(
    data: bytes,
    *,
    path: object,
    tli: int,
    segno: int,
    seg_size: int,
    xlog_blcksz: int = 8192,
    magic: int | None = None,
    system_identifier: int | None = None,
) -> None:
    """Raise CorruptionError unless `data` is the whole segment `segno` of timeline `tli`.

    The page header's timeline may be lower than the name's: the first segment
    of a new timeline starts with a copy of its parent's pages.
    """
    if len(data) != seg_size:
        raise CorruptionError(path, f"WAL segment is {len(data)} bytes, expected {seg_size}")
    (xlp_magic, info, xlp_tli, pageaddr, _rem_len, sysid, xlp_seg_size,
     xlp_blcksz) = LONG_HEADER.unpack_from(data, 0)
    if magic is not None and xlp_magic != magic:
        raise CorruptionError(path, f"WAL page magic {xlp_magic:#06x}, expected {magic:#06x} "
                              "(not a segment of this PostgreSQL version)")
    if magic is None and xlp_magic not in XLOG_PAGE_MAGIC.values():
        raise CorruptionError(path, f"WAL page magic {xlp_magic:#06x} is not one of a known "
                              "PostgreSQL version")
    if not info & XLP_LONG_HEADER or info & ~XLP_ALL_FLAGS:
        raise CorruptionError(path, f"first page info bits {info:#06x}: not a segment's long "
                              "page header")
    if not 1 <= xlp_tli <= tli:
        raise CorruptionError(path, f"page header timeline {xlp_tli}, file is on timeline {tli}")
    want_addr = segno * seg_size
    if pageaddr != want_addr:
        raise CorruptionError(path, f"page address {pageaddr >> 32:X}/{pageaddr & 0xFFFFFFFF:X} "
                              f"but this segment starts at {want_addr >> 32:X}/"
                              f"{want_addr & 0xFFFFFFFF:X} (wrong segment content)")
    if xlp_seg_size != seg_size:
        raise CorruptionError(path, f"page header segment size {xlp_seg_size}, "
                              f"the instance uses {seg_size}")
    if xlp_blcksz != xlog_blcksz:
        raise CorruptionError(path, f"page header WAL block size {xlp_blcksz}, "
                              f"expected {xlog_blcksz}")
    if system_identifier is not None and sysid != system_identifier:
        raise CorruptionError(path, f"segment of database system {sysid}, the instance is "
                              f"{system_identifier} (WAL of another cluster)")
