"""tools.mkbackup's archive-push without a server, against the real thing.

archive-push is checked byte for byte against the real pg_probackup archive of
`pg15-archive` (the same segments pushed again give the same `.gz` files), and
for its rules (plain history/backup/partial files, atomic `.part` + rename, same
content skipped, different content refused unless --overwrite, a crashed push's
temp file taken over, other clusters refused). The command line is in
tests/core/test_mkbackup_archive.py, ARCHIVE-mode backups of a real server in
tests/postgres/test_mkbackup_archive.py.
"""

from __future__ import annotations

import gzip
import os
import threading
import time
from pathlib import Path

import pytest

from pbkfs.errors import CatalogError, UsageError
from tests.support.archive_push import FIXTURE_INSTANCE, FakeCluster
from tools.mkbackup.archive import archive_push


def test_push_gives_pg_probackups_bytes(fixtures_dir: Path, fake: FakeCluster) -> None:
    real = fixtures_dir / "pg15-archive" / "catalog" / "wal" / FIXTURE_INSTANCE
    files = sorted(p.name for p in real.iterdir())
    assert len(files) == 15
    for stored in files:
        name = stored.removesuffix(".gz")
        raw = (real / stored).read_bytes()
        fake.wal(name, gzip.decompress(raw) if stored.endswith(".gz") else raw)
        pushed, dest = fake.push(name, compress_alg="zlib")
        assert pushed and dest.name == stored
    assert sorted(p.name for p in fake.archive.iterdir()) == files
    for stored in files:
        assert (fake.archive / stored).read_bytes() == (real / stored).read_bytes(), stored
        assert (fake.archive / stored).stat().st_mode & 0o777 == 0o600


def test_only_segments_are_compressed(fake: FakeCluster) -> None:
    seg = os.urandom(1024)
    for name in ("00000002.history", "000000010000000000000030.partial",
                 "000000010000000000000030.00000028.backup"):
        fake.wal(name, seg)
        pushed, dest = fake.push(name, compress_alg="zlib")
        assert pushed and dest.name == name and dest.read_bytes() == seg
    fake.wal("000000010000000000000031", seg)
    _pushed, dest = fake.push("000000010000000000000031")
    assert dest.name == "000000010000000000000031" and dest.read_bytes() == seg
    _pushed, dest = fake.push("000000010000000000000031", compress_alg="zlib", compress_level=9)
    assert dest.name == "000000010000000000000031.gz"
    raw = dest.read_bytes()
    assert raw[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03"  # XFL 2: best compression
    assert gzip.decompress(raw) == seg


def test_existing_files_are_kept_unless_overwrite(fake: FakeCluster) -> None:
    name = "000000010000000000000040"
    first, second = os.urandom(4096), os.urandom(4096)
    fake.wal(name, first)
    assert fake.push(name, compress_alg="zlib")[0]
    dest = fake.archive / f"{name}.gz"
    stamp = dest.stat().st_mtime_ns
    assert fake.push(name, compress_alg="zlib") == (False, dest)  # same content: skipped
    assert dest.stat().st_mtime_ns == stamp
    fake.wal(name, second)
    with pytest.raises(CatalogError, match="already exists in archive with different checksum"):
        fake.push(name, compress_alg="zlib")
    assert gzip.decompress(dest.read_bytes()) == first
    assert not list(fake.archive.glob("*.part"))
    assert fake.push(name, compress_alg="zlib", overwrite=True) == (True, dest)
    assert gzip.decompress(dest.read_bytes()) == second
    assert not list(fake.archive.glob("*.part"))


def test_temp_file_of_a_crashed_push_is_taken_over(fake: FakeCluster) -> None:
    name = "000000010000000000000041"
    data = os.urandom(8192)
    fake.wal(name, data)
    fake.archive.mkdir(exist_ok=True)
    (fake.archive / f"{name}.gz.part").write_bytes(b"half a segment")
    assert fake.push(name, compress_alg="zlib", archive_timeout=1)[0]
    assert gzip.decompress((fake.archive / f"{name}.gz").read_bytes()) == data
    assert not (fake.archive / f"{name}.gz.part").exists()


def test_temp_file_still_growing_is_not_taken(fake: FakeCluster) -> None:
    name = "000000010000000000000042"
    fake.wal(name, os.urandom(8192))
    fake.archive.mkdir(exist_ok=True)
    part = fake.archive / f"{name}.gz.part"
    part.write_bytes(b"x")
    stop = threading.Event()

    def grow() -> None:
        while not stop.is_set():
            with open(part, "ab") as f:
                f.write(b"x" * 100)
            time.sleep(0.1)

    writer = threading.Thread(target=grow)
    writer.start()
    try:
        with pytest.raises(CatalogError, match="another push is still writing"):
            fake.push(name, compress_alg="zlib", archive_timeout=2)
    finally:
        stop.set()
        writer.join()
    assert part.exists() and not (fake.archive / f"{name}.gz").exists()


def test_refusals(fake: FakeCluster, tmp_path: Path) -> None:
    name = "000000010000000000000043"
    fake.wal(name, b"x" * 100)
    with pytest.raises(UsageError, match="pglz"):
        fake.push(name, compress_alg="pglz")
    with pytest.raises(UsageError, match="--wal-file-name"):
        archive_push(fake.store, FIXTURE_INSTANCE, "../escape", cwd=fake.pgdata)
    with pytest.raises(CatalogError, match="cannot open source WAL file"):
        fake.push("000000010000000000000044")
    with pytest.raises(CatalogError, match="runs in the server's data directory"):
        archive_push(fake.store, FIXTURE_INSTANCE, name, cwd=tmp_path)
    conf = fake.store / "backups" / FIXTURE_INSTANCE / "pg_probackup.conf"
    conf.write_text(conf.read_text().replace("system-identifier = 7", "system-identifier = 6"))
    with pytest.raises(CatalogError, match="refuse to push WAL file"):
        fake.push(name)
    assert not list(fake.archive.iterdir())
