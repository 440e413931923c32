"""Per-page verification of PostgreSQL data pages (format spec §6.2).

A mount checks every stored page on first read -- header sanity, then the data checksum
(`pd_checksum` when the cluster has checksums, the page_header_map's recorded checksum when the
caller has one) -- so that a corrupt page is refused instead of served. `page_checksum` is the C
implementation of PostgreSQL's pg_checksum_page; `page_checksum_reference` is the same in plain
Python for the tests to compare against.
"""

from __future__ import annotations

import struct

from pbkfs.codecs import _native

BLCKSZ = 8192
_PAGE_HEADER_SIZE = 24  # SizeOfPageHeaderData
_VALID_FLAG_BITS = 0x0007  # PD_HAS_FREE_LINES | PD_PAGE_FULL | PD_ALL_VISIBLE
_HEADER = struct.Struct("<HHHHHH")  # checksum, flags, lower, upper, special, pagesize_version
_ZERO_PAGE = bytes(BLCKSZ)

_FNV_PRIME = 16777619
_N_SUMS = 32
_CHECKSUM_BASE = (
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
)  # fmt: skip

Page = bytes | bytearray | memoryview


def page_checksum(page: Page, blkno: int) -> int:
    """PostgreSQL's pg_checksum_page (1..65535) of an 8192-byte page at absolute block `blkno`."""
    return _native.page_checksum(page, blkno)


def page_checksum_reference(page: Page, blkno: int) -> int:
    """pg_checksum_page in plain Python (spec §6.2), the yardstick for `page_checksum`."""
    if len(page) != BLCKSZ:
        raise ValueError(f"page_checksum: page has {len(page)} bytes, expected {BLCKSZ}")
    if not 0 <= blkno <= 0xFFFFFFFF:
        raise ValueError("page_checksum: blkno must be in 0..4294967295")
    words = list(struct.unpack(f"<{BLCKSZ // 4}I", page))
    words[2] &= 0xFFFF0000  # pd_checksum (bytes 8..9) is computed as zero
    sums = list(_CHECKSUM_BASE)

    def mix(s: int, v: int) -> int:
        t = s ^ v
        return ((t * _FNV_PRIME) ^ (t >> 17)) & 0xFFFFFFFF

    for row in range(0, len(words), _N_SUMS):
        for j in range(_N_SUMS):
            sums[j] = mix(sums[j], words[row + j])
    for _ in range(2):
        for j in range(_N_SUMS):
            sums[j] = mix(sums[j], 0)
    c = 0
    for s in sums:
        c ^= s
    c ^= blkno
    return (c % 65535) + 1


def is_zero_page(page: Page) -> bool:
    """True if every byte is zero (PostgreSQL accepts such a page: extended, never written)."""
    if len(page) == BLCKSZ:
        return page == _ZERO_PAGE
    return bytes(page).count(0) == len(page)


def header_is_sane(page: Page, block_size: int = BLCKSZ) -> bool:
    """The page header checks of PageIsVerified / pg_probackup's parse_page (spec §6.2 step 1)."""
    if len(page) < _PAGE_HEADER_SIZE:
        return False
    _checksum, flags, lower, upper, special, size_version = _HEADER.unpack_from(page, 8)
    return (
        size_version & 0xFF00 == block_size
        and flags & ~_VALID_FLAG_BITS == 0
        and _PAGE_HEADER_SIZE <= lower <= upper <= special <= block_size
        and special % 8 == 0
    )


def check_page(
    page: Page, absolute_blkno: int, *, checksums_enabled: bool, expected_checksum: int | None
) -> str | None:
    """None if the page may be served, else a short reason why it must not be (spec §6.2).

    `absolute_blkno` is segno * RELSEG_SIZE + block. `expected_checksum` is the checksum the
    backup recorded for this page (page_header_map; 0 for an all-zero page) or None if unknown.
    """
    if len(page) != BLCKSZ:
        return f"page has {len(page)} bytes, expected {BLCKSZ}"
    if not header_is_sane(page):
        if not is_zero_page(page):
            return "page header is corrupt"
        if expected_checksum:
            return f"checksum mismatch: backup recorded {expected_checksum} for an all-zero page"
        return None
    if not checksums_enabled and expected_checksum is None:
        return None
    computed = page_checksum(page, absolute_blkno)
    if checksums_enabled:
        stored = _HEADER.unpack_from(page, 8)[0]
        if stored != computed:
            return f"checksum mismatch: page has {stored}, computed {computed}"
    if expected_checksum is not None and expected_checksum != computed:
        return f"checksum mismatch: backup recorded {expected_checksum}, computed {computed}"
    return None
