"""Page verification: checksum (C vs reference vs real pages), header sanity, check_page reasons."""

from __future__ import annotations

import json
import random
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbkfs.codecs import pagecheck, pglz

BLCKSZ = 8192
RELSEG_SIZE = 131072
FULL_NONE = "pg15/catalog/backups/main/TP2KB6"  # FULL, compress none, checksums on


def raw_pages_of(backup_dir: Path, prefix: str) -> Iterator[tuple[str, int, bytes]]:
    """(path, absolute block, page) of the files under `prefix` of an uncompressed backup.

    Datafiles are page streams ({int32 block, int32 8192} + page); the _fsm/_vm forks are
    plain copies, but their pages carry checksums too.
    """
    with open(backup_dir / "backup_content.control") as fh:
        entries = [json.loads(line) for line in fh]
    for e in entries:
        path = e["path"]
        if not path.startswith(prefix) or int(e["size"]) <= 0:
            continue
        data = (backup_dir / "database" / path).read_bytes()
        if e["is_datafile"] == "1":
            segno = int(e["segno"])
            for off in range(0, len(data), 8 + BLCKSZ):
                block, size = struct.unpack_from("<Ii", data, off)
                assert size == BLCKSZ, (path, off)
                yield path, segno * RELSEG_SIZE + block, data[off + 8 : off + 8 + BLCKSZ]
        elif path.endswith(("_fsm", "_vm")):
            for block in range(len(data) // BLCKSZ):
                yield path, block, data[block * BLCKSZ : (block + 1) * BLCKSZ]


@pytest.fixture(scope="module")
def base5_pages(fixtures_dir: Path) -> list[tuple[str, int, bytes]]:
    pages = list(raw_pages_of(fixtures_dir / FULL_NONE, "base/5/"))
    assert len(pages) > 1000
    assert any(path.endswith("_vm") for path, _, _ in pages)
    return pages


def pd_checksum(page: bytes) -> int:
    return int(struct.unpack_from("<H", page, 8)[0])


# ---------------------------------------------------------------- real pages


def test_real_pages_checksum_equals_pd_checksum(base5_pages: list) -> None:
    zero = 0
    for name, blk, page in base5_pages:
        assert (
            pagecheck.check_page(page, blk, checksums_enabled=True, expected_checksum=None) is None
        )
        if pagecheck.is_zero_page(page):  # extended but never written: no header, no checksum
            zero += 1
            continue
        assert pagecheck.header_is_sane(page), (name, blk)
        assert pagecheck.page_checksum(page, blk) == pd_checksum(page), (name, blk)
    assert zero < len(base5_pages) // 10


def test_reference_checksum_equals_c_on_real_pages(base5_pages: list) -> None:
    for name, blk, page in base5_pages[::10]:
        expected = pagecheck.page_checksum(page, blk)
        assert pagecheck.page_checksum_reference(page, blk) == expected, (name, blk)
        assert pagecheck.is_zero_page(page) or expected == pd_checksum(page)


def backup_pages(backup_dir: Path) -> Iterator[tuple[str, int, bytes, int]]:
    """(path, absolute block, decoded page, page_header_map checksum) of every stored page."""
    header_map = (backup_dir / "page_header_map").read_bytes()
    with open(backup_dir / "backup_content.control") as fh:
        entries = [json.loads(line) for line in fh]
    for e in entries:
        if e["is_datafile"] != "1" or int(e["size"]) <= 0:
            continue
        n = int(e["n_headers"])
        region = header_map[int(e["hdr_off"]) : int(e["hdr_off"]) + int(e["hdr_size"])]
        records = zlib.decompress(region)
        assert len(records) == (n + 1) * 24
        data = (backup_dir / "database" / e["path"]).read_bytes()
        for i in range(n):
            _lsn, block, pos, checksum = struct.unpack_from("<QiiH", records, i * 24)
            inline_block, size = struct.unpack_from("<Ii", data, pos)
            assert inline_block == block
            payload = data[pos + 8 : pos + 8 + size]
            if size == BLCKSZ:
                page = payload
            elif e["compress_alg"] == "pglz":
                page = pglz.decompress(payload, BLCKSZ)
            else:
                assert e["compress_alg"] == "zlib"
                page = zlib.decompress(payload)
            yield e["path"], int(e["segno"]) * RELSEG_SIZE + block, page, checksum


def test_every_page_of_the_pg15_catalog_verifies(fixtures_dir: Path) -> None:
    """Both instances (with and without data checksums), all codecs, map checksums included."""
    seen = {"zero": 0, "pages": 0, "nochk": 0}
    for control in sorted((fixtures_dir / "pg15/catalog/backups").glob("*/*/backup.control")):
        backup_dir = control.parent
        checksums = "checksum-version = 1" in control.read_text()
        for path, blk, page, map_checksum in backup_pages(backup_dir):
            reason = pagecheck.check_page(
                page, blk, checksums_enabled=checksums, expected_checksum=map_checksum
            )
            assert reason is None, (backup_dir.name, path, blk, reason)
            seen["pages"] += 1
            seen["zero"] += pagecheck.is_zero_page(page)
            seen["nochk"] += not checksums
            if not checksums and not pagecheck.is_zero_page(page):
                # without data checksums pd_checksum is not maintained; the map still holds it
                assert map_checksum == pagecheck.page_checksum(page, blk)
    assert seen["pages"] > 10000 and seen["nochk"] > 1000
    assert seen["zero"] > 0  # all-zero pages are stored too, with map checksum 0


# ---------------------------------------------------------------- check_page reasons


@pytest.fixture(scope="module")
def good_page(base5_pages: list) -> tuple[int, bytes]:
    name, blk, page = next(p for p in base5_pages if p[1] > 0)
    return blk, page


def test_flipped_byte_is_a_checksum_mismatch(good_page: tuple[int, bytes]) -> None:
    blk, page = good_page
    bad = bytearray(page)
    bad[5000] ^= 0x40
    computed = pagecheck.page_checksum(bad, blk)
    reason = pagecheck.check_page(bad, blk, checksums_enabled=True, expected_checksum=None)
    assert reason == f"checksum mismatch: page has {pd_checksum(page)}, computed {computed}"
    # without checksums and without a recorded checksum there is nothing to catch it
    assert pagecheck.check_page(bad, blk, checksums_enabled=False, expected_checksum=None) is None
    reason = pagecheck.check_page(
        bad, blk, checksums_enabled=False, expected_checksum=pd_checksum(page)
    )
    assert reason == f"checksum mismatch: backup recorded {pd_checksum(page)}, computed {computed}"


def test_wrong_block_number_is_a_checksum_mismatch(good_page: tuple[int, bytes]) -> None:
    blk, page = good_page
    reason = pagecheck.check_page(page, blk + 1, checksums_enabled=True, expected_checksum=None)
    assert reason is not None and reason.startswith("checksum mismatch: page has")


def test_recorded_checksum_is_compared(good_page: tuple[int, bytes]) -> None:
    blk, page = good_page
    ok = pd_checksum(page)
    assert pagecheck.check_page(page, blk, checksums_enabled=False, expected_checksum=ok) is None
    wrong = ok % 65535 + 1
    reason = pagecheck.check_page(page, blk, checksums_enabled=True, expected_checksum=wrong)
    assert reason == f"checksum mismatch: backup recorded {wrong}, computed {ok}"


def test_corrupt_header(good_page: tuple[int, bytes]) -> None:
    blk, page = good_page
    bad = bytearray(page)
    bad[10] |= 0x08  # an undefined pd_flags bit
    for checksums in (True, False):
        reason = pagecheck.check_page(bad, blk, checksums_enabled=checksums, expected_checksum=None)
        assert reason == "page header is corrupt"


def test_zero_page_is_valid() -> None:
    zero = bytes(BLCKSZ)
    assert pagecheck.is_zero_page(zero)
    assert not pagecheck.header_is_sane(zero)
    assert pagecheck.check_page(zero, 7, checksums_enabled=True, expected_checksum=None) is None
    assert pagecheck.check_page(zero, 7, checksums_enabled=True, expected_checksum=0) is None
    reason = pagecheck.check_page(zero, 7, checksums_enabled=True, expected_checksum=1234)
    assert reason == "checksum mismatch: backup recorded 1234 for an all-zero page"


def test_almost_zero_page_is_corrupt() -> None:
    page = bytearray(BLCKSZ)
    page[8000] = 1
    assert not pagecheck.is_zero_page(page)
    reason = pagecheck.check_page(page, 0, checksums_enabled=False, expected_checksum=None)
    assert reason == "page header is corrupt"


def test_wrong_page_size() -> None:
    reason = pagecheck.check_page(bytes(100), 0, checksums_enabled=True, expected_checksum=None)
    assert reason == "page has 100 bytes, expected 8192"


def test_is_zero_page_accepts_bytes_like() -> None:
    assert pagecheck.is_zero_page(bytearray(BLCKSZ))
    assert pagecheck.is_zero_page(memoryview(bytes(BLCKSZ)))
    assert pagecheck.is_zero_page(bytes(10))
    assert not pagecheck.is_zero_page(memoryview(b"\0" * 8191 + b"\1"))
    assert not pagecheck.is_zero_page(b"\0\1")


# ---------------------------------------------------------------- header sanity


def make_header(
    flags: int = 0, lower: int = 40, upper: int = 8000, special: int = 8192, size: int = 8192
) -> bytes:
    head = struct.pack("<IIHHHHHHI", 0, 1, 0, flags, lower, upper, special, size | 4, 0)
    return head + bytes(BLCKSZ - len(head))


@pytest.mark.parametrize(
    ("fields", "sane"),
    [
        ({}, True),
        ({"flags": 0x0007}, True),
        ({"lower": 24, "upper": 24, "special": 24}, True),
        ({"special": 8184, "upper": 8184}, True),
        ({"flags": 0x0008}, False),
        ({"lower": 23}, False),
        ({"lower": 8001}, False),
        ({"upper": 8193, "special": 8192}, False),
        ({"special": 8200, "upper": 8000}, False),
        ({"special": 8188, "upper": 8000}, False),  # not MAXALIGNed
        ({"size": 4096}, False),
    ],
)
def test_header_is_sane(fields: dict[str, int], sane: bool) -> None:
    assert pagecheck.header_is_sane(make_header(**fields)) is sane


def test_header_is_sane_other_block_size() -> None:
    page = make_header(lower=40, upper=2000, special=4096, size=4096)[:4096]
    assert pagecheck.header_is_sane(page, block_size=4096)
    assert not pagecheck.header_is_sane(page)
    assert not pagecheck.header_is_sane(page[:20])


# ---------------------------------------------------------------- checksum function


random_pages = st.builds(lambda seed: random.Random(seed).randbytes(BLCKSZ), st.integers())


@settings(max_examples=60, deadline=None)
@given(page=random_pages, blkno=st.integers(min_value=0, max_value=2**32 - 1))
def test_checksum_c_equals_reference(page: bytes, blkno: int) -> None:
    c = pagecheck.page_checksum(page, blkno)
    assert 1 <= c <= 65535
    assert c == pagecheck.page_checksum_reference(page, blkno)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.binary(min_size=1, max_size=64),
    pd=st.integers(min_value=0, max_value=0xFFFF),
    blkno=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_checksum_ignores_pd_checksum_field(seed: bytes, pd: int, blkno: int) -> None:
    page = bytearray((seed * (BLCKSZ // len(seed) + 1))[:BLCKSZ])
    before = pagecheck.page_checksum(page, blkno)
    struct.pack_into("<H", page, 8, pd)
    assert pagecheck.page_checksum(page, blkno) == before
    assert pagecheck.page_checksum_reference(page, blkno) == before


def test_checksum_argument_errors() -> None:
    for fn in (pagecheck.page_checksum, pagecheck.page_checksum_reference):
        with pytest.raises(ValueError, match="8192"):
            fn(bytes(100), 0)
        with pytest.raises(ValueError, match="blkno"):
            fn(bytes(BLCKSZ), -1)
        with pytest.raises(ValueError, match="blkno"):
            fn(bytes(BLCKSZ), 2**32)
    assert pagecheck.page_checksum(bytearray(BLCKSZ), 3) == pagecheck.page_checksum(
        memoryview(bytes(BLCKSZ)), 3
    )
