"""Per-page decisions: is this page sane, what is its LSN and checksum, how is it compressed.

The checksum and pglz code are the project's shared codecs (C, via
pbkfs.codecs); this module only adapts them to what a backup writer asks.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from enum import Enum

from pbkfs.codecs import _native

try:  # the shared page-check helpers, once present
    from pbkfs.codecs import pagecheck as _pagecheck  # type: ignore[attr-defined]

    _checksum: Callable[[bytes, int], int] = _pagecheck.page_checksum
except (ImportError, AttributeError):
    _checksum = _native.page_checksum

_HEADER = struct.Struct("<IIHHHHHH")  # lsn hi/lo, checksum, flags, lower, upper, special, size+ver
PAGE_HEADER_SIZE = 24


class PageState(Enum):
    ZERO = "zero"  # all-zero page: valid, stored as is
    VALID = "valid"
    BAD_HEADER = "bad header"
    BAD_CHECKSUM = "bad checksum"


def page_checksum(page: bytes, abs_blkno: int) -> int:
    """pg_checksum_page() of `page` as block `abs_blkno` of its relation."""
    return _checksum(page, abs_blkno)


def inspect_page(
    page: bytes, abs_blkno: int, blcksz: int, zero_page: bytes, verify_checksum: bool
) -> tuple[PageState, int, int]:
    """(state, page LSN, computed checksum); LSN and checksum are 0 for an all-zero page.

    The checks are those of pg_probackup's validate_one_page (format spec §6.2).
    """
    hi, lo, stored, flags, lower, upper, special, size_version = _HEADER.unpack_from(page)
    sane = (
        size_version & 0xFF00 == blcksz
        and flags & ~0x0007 == 0
        and PAGE_HEADER_SIZE <= lower <= upper <= special <= blcksz
        and special % 8 == 0
    )
    if not sane:
        if page == zero_page:
            return PageState.ZERO, 0, 0
        return PageState.BAD_HEADER, 0, 0
    computed = _checksum(page, abs_blkno)
    if verify_checksum and computed != stored:
        return PageState.BAD_CHECKSUM, (hi << 32) | lo, computed
    return PageState.VALID, (hi << 32) | lo, computed


def _pglz_compressor() -> Callable[[bytes], bytes | None]:
    """pglz with PGLZ_strategy_always, the strategy pg_probackup uses for pages."""
    try:
        from pbkfs.codecs import pglz
    except ImportError:
        return lambda page: _native.pglz_compress(page, always=True)

    def compress(page: bytes) -> bytes | None:
        try:
            return pglz.compress(page, strategy="always")  # type: ignore[call-arg]
        except TypeError:  # an API without strategies
            return pglz.compress(page)

    return compress


def make_compressor(alg: str, level: int) -> Callable[[bytes], bytes | None] | None:
    """Page compressor for `alg` (None for `none`); it returns None when a page does not shrink."""
    if alg == "none":
        return None
    if alg == "zlib":
        return lambda page: zlib.compress(page, level)
    if alg == "pglz":
        return _pglz_compressor()
    raise ValueError(f"unknown compression algorithm {alg!r}")
