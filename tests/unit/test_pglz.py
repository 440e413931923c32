"""pglz: the C codec against the plain-Python references, real pg_probackup payloads, bad input."""

from __future__ import annotations

import json
import os
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbkfs.codecs import pagecheck, pglz
from pbkfs.errors import CodecError

BLCKSZ = 8192
RELSEG_SIZE = 131072
FULL_NONE = "pg15/catalog/backups/main/TP2KB6"  # FULL, compress none, checksums on
PAGE_PGLZ = "pg15/catalog/backups/main/TP2KBV"  # PAGE, compress pglz, checksums on


def stored_pages(backup_dir: Path) -> Iterator[tuple[str, int, int, bytes]]:
    """(path, absolute block, compressed_size, payload) of every stored page of a backup."""
    with open(backup_dir / "backup_content.control") as fh:
        entries = [json.loads(line) for line in fh]
    for e in entries:
        if e["is_datafile"] != "1" or int(e["size"]) <= 0:
            continue
        data = (backup_dir / "database" / e["path"]).read_bytes()
        segno = int(e["segno"])
        off = 0
        while off < len(data):
            block, size = struct.unpack_from("<Ii", data, off)
            assert 0 < size <= BLCKSZ, (e["path"], off, size)
            yield e["path"], segno * RELSEG_SIZE + block, size, data[off + 8 : off + 8 + size]
            off += 8 + size
        assert off == len(data), e["path"]


@pytest.fixture(scope="module")
def pglz_payloads(fixtures_dir: Path) -> list[tuple[str, int, bytes]]:
    pages = [(p, b, payload) for p, b, size, payload in stored_pages(fixtures_dir / PAGE_PGLZ)]
    assert len(pages) > 500  # the fixture holds 611 pglz pages
    return pages


@pytest.fixture(scope="module")
def raw_pages(fixtures_dir: Path) -> list[tuple[str, int, bytes]]:
    pages = []
    for path, blk, size, payload in stored_pages(fixtures_dir / FULL_NONE):
        assert size == BLCKSZ
        pages.append((path, blk, payload))
    assert len(pages) > 4000
    return pages


def spread(items: list, n: int) -> list:
    """n items spread evenly over the list (deterministic sample)."""
    step = max(1, len(items) // n)
    return items[::step][:n]


# ---------------------------------------------------------------- real pg_probackup payloads


def test_real_pglz_pages_decode_to_valid_pages(pglz_payloads: list) -> None:
    for path, blk, payload in pglz_payloads:
        page = pglz.decompress(payload, BLCKSZ)
        assert len(page) == BLCKSZ
        assert pagecheck.header_is_sane(page), (path, blk)
        pd_checksum = struct.unpack_from("<H", page, 8)[0]
        assert pagecheck.page_checksum(page, blk) == pd_checksum, (path, blk)


def test_reference_decoder_agrees_on_real_pages(pglz_payloads: list) -> None:
    for _path, _blk, payload in spread(pglz_payloads, 150):
        assert pglz.decompress_reference(payload, BLCKSZ) == pglz.decompress(payload, BLCKSZ)


def test_recompression_is_byte_identical_to_pg_probackup(pglz_payloads: list) -> None:
    """pg_probackup stores pages with PGLZ_strategy_always: we reproduce its bytes exactly."""
    for path, blk, payload in pglz_payloads:
        page = pglz.decompress(payload, BLCKSZ)
        assert pglz.compress(page, strategy="always") == payload, (path, blk)


def test_reference_compressor_reproduces_pg_probackup(pglz_payloads: list) -> None:
    for path, blk, payload in spread(pglz_payloads, 12):
        page = pglz.decompress(payload, BLCKSZ)
        assert pglz.compress_reference(page, strategy="always") == payload, (path, blk)


def test_raw_pages_round_trip(raw_pages: list) -> None:
    compressed = 0
    for path, blk, page in raw_pages:
        for strategy in ("default", "always"):
            c = pglz.compress(page, strategy=strategy)  # type: ignore[arg-type]
            if c is None:
                continue
            compressed += 1
            assert len(c) < BLCKSZ
            assert pglz.decompress(c, BLCKSZ) == page, (path, blk, strategy)
    assert compressed > len(raw_pages)  # catalog pages compress well, under both strategies


def test_reference_compressor_equals_c_on_real_pages(raw_pages: list) -> None:
    for path, blk, page in spread(raw_pages, 12):
        for strategy in ("default", "always"):
            c = pglz.compress(page, strategy=strategy)  # type: ignore[arg-type]
            r = pglz.compress_reference(page, strategy=strategy)  # type: ignore[arg-type]
            assert r == c, (path, blk, strategy)


# ---------------------------------------------------------------- compression rules


def test_default_strategy_refusals() -> None:
    assert pglz.compress(b"a" * 31) is None  # below min_input_size 32
    assert pglz.compress(b"a" * 32) is not None
    assert pglz.compress(os.urandom(BLCKSZ)) is None  # nothing found in the first 1024 bytes
    data = os.urandom(1200) + os.urandom(300) * 2  # matches only after 1200 literals
    assert pglz.compress(data) is None
    assert pglz.compress(data, strategy="always") is not None
    # compressible, but not by the 25% the default strategy demands
    data = b"a" * 400 + os.urandom(1200)
    assert pglz.compress(data) is None
    assert pglz.compress_reference(data) is None
    assert pglz.compress(b"") is None


def test_always_strategy_accepts_any_gain() -> None:
    data = b"a" * 400 + os.urandom(1200)
    c = pglz.compress(data, strategy="always")
    assert c is not None and len(c) < len(data)
    assert pglz.decompress(c, len(data)) == data
    assert pglz.compress(b"", strategy="always") is None  # output must be smaller than input
    assert pglz.compress(b"abcabc", strategy="always") is None


def test_long_match_uses_extension_byte() -> None:
    data = b"x" * 1000
    c = pglz.compress(data)
    assert c is not None
    # control (literal, then matches), 'x', tag offset 1 length 18 + 255 = 273: 0F 01 FF
    assert c[0] & 0b11 == 0b10
    assert c[1:5] == bytes([ord("x"), 0x0F, 0x01, 0xFF])
    assert pglz.decompress(c, 1000) == data


def test_unknown_strategy_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        pglz.compress(b"a" * 100, strategy="fast")  # type: ignore[arg-type]


def test_bytes_like_inputs() -> None:
    data = b"hello world, " * 40
    c = pglz.compress(data)
    assert c is not None
    assert pglz.compress(bytearray(data)) == c
    assert pglz.compress(memoryview(data)) == c
    assert pglz.decompress(bytearray(c), len(data)) == data
    assert pglz.decompress(memoryview(c), len(data)) == data
    assert pglz.compress_reference(memoryview(data)) == c
    assert pglz.decompress_reference(bytearray(c), len(data)) == data


def test_parallel_calls_do_not_share_state() -> None:
    """The C code runs without the GIL: concurrent calls must not interfere."""
    inputs = [(bytes([i]) * 50 + os.urandom(20)) * 100 for i in range(8)]
    expected = [pglz.compress(d) for d in inputs]
    errors: list[str] = []

    def work(k: int) -> None:
        for _ in range(200):
            c = pglz.compress(inputs[k])
            if c != expected[k] or c is None or pglz.decompress(c, len(inputs[k])) != inputs[k]:
                errors.append(f"thread {k}")
                return

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ---------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("src", "rawsize", "reason"),
    [
        (b"\x01\x10", 10, "match tag runs past"),  # tag needs 2 bytes
        (b"\x02a\x0f\x01", 300, "match length byte runs past"),  # length 18 needs a third byte
        (b"\x01\x00\x00", 10, "offset is zero"),
        (b"\x02a\x00\x02", 10, "before the start of the output"),  # offset 2 after 1 byte
        (b"\x01\x00\x01", 10, "before the start of the output"),  # match before any output
        (b"\x00abc", 5, "input ends before the output is complete"),
        (b"", 1, "input ends before the output is complete"),
        (b"\x00abc", 2, "bytes left after the output is complete"),
        (b"\x00ab\x00c", 2, "bytes left after the output is complete"),
    ],
)
def test_malformed_streams_raise_codec_error(src: bytes, rawsize: int, reason: str) -> None:
    with pytest.raises(CodecError, match=reason):
        pglz.decompress(src, rawsize)
    with pytest.raises(CodecError, match=reason):
        pglz.decompress_reference(src, rawsize)


def test_negative_rawsize() -> None:
    with pytest.raises(CodecError):
        pglz.decompress(b"", -1)
    with pytest.raises(CodecError):
        pglz.decompress_reference(b"", -1)


def test_empty_stream_to_empty_output() -> None:
    assert pglz.decompress(b"", 0) == b""
    assert pglz.decompress_reference(b"", 0) == b""


def test_overlapping_match_repeats_bytes() -> None:
    # literals 'a','b', then match offset 2 length 7 -> "ab" repeated (memmove would differ)
    src = bytes([0b100, ord("a"), ord("b"), 0x04, 0x02])
    assert pglz.decompress(src, 9) == b"ababababa"
    assert pglz.decompress_reference(src, 9) == b"ababababa"


def test_over_long_match_is_clipped_at_rawsize() -> None:
    src = bytes([0b10, ord("z"), 0x0F, 0x01, 0xFF])  # asks for 273 bytes
    assert pglz.decompress(src, 100) == b"z" * 100
    assert pglz.decompress_reference(src, 100) == b"z" * 100


# ---------------------------------------------------------------- generated data


def repetitive_data() -> st.SearchStrategy[bytes]:
    """Compressible input: small pieces repeated, with the odd random stretch."""
    piece = st.tuples(st.binary(min_size=1, max_size=24), st.integers(min_value=1, max_value=40))
    return st.lists(piece, max_size=60).map(lambda ps: b"".join(b * n for b, n in ps))


any_data = st.one_of(st.binary(max_size=600), repetitive_data())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=any_data, strategy=st.sampled_from(["default", "always"]))
def test_round_trip_and_reference_agree(data: bytes, strategy: str) -> None:
    c = pglz.compress(data, strategy=strategy)  # type: ignore[arg-type]
    assert c == pglz.compress_reference(data, strategy=strategy)  # type: ignore[arg-type]
    if c is not None:
        assert len(c) < len(data)
        assert pglz.decompress(c, len(data)) == data
        assert pglz.decompress_reference(c, len(data)) == data


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(st.binary(min_size=8, max_size=200), min_size=1, max_size=6),
    order=st.lists(st.integers(min_value=0, max_value=5), min_size=20, max_size=120),
)
def test_large_inputs_past_the_history_window(parts: list[bytes], order: list[int]) -> None:
    """Inputs longer than 4096 bytes exercise history recycling and the offset limit."""
    data = b"".join(parts[i % len(parts)] for i in order)
    while len(data) < 9000:
        data += data[: 9000 - len(data)] + os.urandom(7)
    for strategy in ("default", "always"):
        c = pglz.compress(data, strategy=strategy)  # type: ignore[arg-type]
        assert c == pglz.compress_reference(data, strategy=strategy)  # type: ignore[arg-type]
        if c is not None:
            assert pglz.decompress(c, len(data)) == data


def decode_outcome(fn: Callable[[bytes, int], bytes], src: bytes, rawsize: int) -> bytes | str:
    try:
        return fn(src, rawsize)
    except CodecError:
        return "CodecError"


@settings(max_examples=1500, deadline=None)
@given(src=st.binary(max_size=300), rawsize=st.integers(min_value=0, max_value=700))
def test_arbitrary_bytes_decode_or_raise_codec_error(src: bytes, rawsize: int) -> None:
    c = decode_outcome(pglz.decompress, src, rawsize)
    assert c == decode_outcome(pglz.decompress_reference, src, rawsize)
    if isinstance(c, bytes):
        assert len(c) == rawsize


@settings(max_examples=400, deadline=None)
@given(data=repetitive_data(), flips=st.lists(st.integers(min_value=0), max_size=4))
def test_damaged_streams_never_crash(data: bytes, flips: list[int]) -> None:
    """Flip bytes of a valid stream: C and reference must agree, failures are CodecError."""
    c = pglz.compress(data, strategy="always")
    if c is None:
        return
    damaged = bytearray(c)
    for f in flips:
        damaged[f % len(damaged)] ^= (f >> 8) % 255 + 1
    for rawsize in (len(data), len(data) - 1, len(data) + 5):
        if rawsize < 0:
            continue
        out = decode_outcome(pglz.decompress, bytes(damaged), rawsize)
        assert out == decode_outcome(pglz.decompress_reference, bytes(damaged), rawsize)
