"""A WAL segment copied without fetching its zero tail, decided by the listed CRC."""

from __future__ import annotations

import os
import random
import zlib
from pathlib import Path

import pytest

from pbkfs.codecs.crc import crc32c
from pbkfs.fs.walcopy import Checksum, copy_to, crc_with_zeros, fetch_checked

SEG = 16 << 20


class Segment:
    """A stored file with a listed CRC; counts the bytes read."""

    def __init__(self, data: bytes, listed: tuple[Checksum, int] | None) -> None:
        self.data, self.listed, self.fetched = data, listed, 0

    def read(self, path: str, offset: int, length: int) -> bytes:
        chunk = self.data[offset:offset + length]
        self.fetched += len(chunk)
        return chunk

    def content_crc(self, path: str) -> tuple[Checksum, int] | None:
        return self.listed


def segment(written: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(written) + bytes(SEG - written)


@pytest.mark.parametrize("fn", [crc32c, zlib.crc32], ids=["crc32c", "crc32"])
def test_zero_tail_is_allocated_not_fetched(tmp_path: Path, fn: Checksum) -> None:
    data = segment(300_000)
    src = Segment(data, (fn, fn(data, 0)))
    dst = tmp_path / "000000010000000000000001"
    fetched = copy_to(src, "pg_wal/000000010000000000000001", SEG, str(dst), 0o600)
    assert fetched == src.fetched <= 1 << 20  # 256 KiB, then 1 MiB
    assert dst.read_bytes() == data
    st = os.stat(dst)
    assert st.st_size == SEG and st.st_blocks * 512 >= SEG  # allocated: no hole to fill later
    assert st.st_mode & 0o777 == 0o600


def test_a_tail_that_is_not_zeros_is_fetched_whole(tmp_path: Path) -> None:
    data = bytearray(segment(100_000))
    data[10 << 20] = 1  # one byte far out in the tail
    src = Segment(bytes(data), (crc32c, crc32c(bytes(data), 0)))
    got, zero_tail = fetch_checked(src, "x", SEG)
    assert got == bytes(data) and not zero_tail and src.fetched == SEG


def test_without_a_listed_crc_or_with_a_wrong_one_every_byte_is_read(tmp_path: Path) -> None:
    data = segment(5000)
    for listed in (None, (crc32c, crc32c(data, 0) ^ 1)):
        src = Segment(data, listed)
        got, zero_tail = fetch_checked(src, "x", SEG)
        assert got == data and not zero_tail and src.fetched == SEG


def test_a_file_shorter_than_listed_is_what_the_reads_give() -> None:
    src = Segment(b"abc", (crc32c, 12345))
    assert fetch_checked(src, "x", 10) == (b"abc", False)


def test_crc_with_zeros_equals_the_crc_of_the_zeros() -> None:
    for n in (0, 1, 5000, (1 << 20) + 3):
        assert crc_with_zeros(crc32c, crc32c(b"head", 0), n) == crc32c(b"head" + bytes(n), 0)
