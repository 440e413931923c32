"""Per-page decisions: is this page whole, what are its LSN and checksum, how is it compressed.

The checks, the checksum and pglz are the project's shared codecs
(pbkfs.codecs.pagecheck, pbkfs.codecs.pglz); this module only adapts them to
the questions a backup writer asks.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from enum import Enum

from pbkfs.codecs import pglz
from pbkfs.codecs.pagecheck import header_is_sane, page_checksum

_LSN_AND_CHECKSUM = struct.Struct("<IIH")  # pd_lsn (xlogid, xrecoff), pd_checksum


class PageState(Enum):
    ZERO = "zero"  # all-zero page: valid, stored as is
    VALID = "valid"
    BAD_HEADER = "bad header"
    BAD_CHECKSUM = "bad checksum"


def inspect_page(
    page: bytes, abs_blkno: int, blcksz: int, zero_page: bytes, verify_checksum: bool
) -> tuple[PageState, int, int]:
    """(state, page LSN, computed checksum); LSN and checksum are 0 for an all-zero page.

    The checks are those of pg_probackup's validate_one_page (format spec §6.2);
    the checksum is computed even without data checksums, for page_header_map.
    """
    if not header_is_sane(page, blcksz):
        if page == zero_page:
            return PageState.ZERO, 0, 0
        return PageState.BAD_HEADER, 0, 0
    hi, lo, stored = _LSN_AND_CHECKSUM.unpack_from(page)
    computed = page_checksum(page, abs_blkno)
    if verify_checksum and computed != stored:
        return PageState.BAD_CHECKSUM, (hi << 32) | lo, computed
    return PageState.VALID, (hi << 32) | lo, computed


def _pglz_always(page: bytes) -> bytes | None:
    """pglz with PGLZ_strategy_always, the strategy pg_probackup uses for pages."""
    return pglz.compress(page, strategy="always")


def make_compressor(alg: str, level: int) -> Callable[[bytes], bytes | None] | None:
    """Page compressor for `alg` (None for `none`); it returns None when a page does not shrink."""
    if alg == "none":
        return None
    if alg == "zlib":
        return lambda page: zlib.compress(page, level)
    if alg == "pglz":
        return _pglz_always
    raise ValueError(f"unknown compression algorithm {alg!r}")
