"""A fake backup for the object store: path -> bytes, and a store over it."""

from __future__ import annotations

import random
from pathlib import Path

from pbkfs.diff.objects import ObjectStore

BS = 8192


class FakeBase:
    """A backup: path -> bytes; counts reads so tests can prove what was (not) read."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.reads = 0

    def read(self, path: str, offset: int, length: int) -> bytes:
        self.reads += 1
        return self.files[path][offset : offset + length]

    def base_size(self, path: str) -> int:
        return len(self.files[path])


def pattern(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def fake_base() -> FakeBase:
    """A 5-block datafile, a file shorter than a block, one not a multiple of a block."""
    return FakeBase({
        "rel": pattern(5 * BS, 1),          # a 5-block datafile
        "small": b"hello, world\n",          # a file shorter than a block
        "odd": pattern(2 * BS + 100, 2),     # not a multiple of the block size
    })


def store(tmp_path: Path, base: FakeBase) -> ObjectStore:
    objects = tmp_path / "objects"
    objects.mkdir(exist_ok=True)
    return ObjectStore(str(objects), base, BS)
