"""The storage layer's pure parts: S3 settings the standard AWS way, the chunk cache's
checks and eviction, and a directory location read like an object-store one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pbkfs.config import StoreConfig
from pbkfs.errors import UsageError
from pbkfs.storage.chunkcache import CHUNK, TRAILER, ChunkCache
from pbkfs.storage.location import describe, file_size, files_with_sizes, is_store_url, location
from pbkfs.storage.objectstore import _recursive_anchor, split_url
from pbkfs.storage.s3config import resolve
from pbkfs.storage.stats import StoreStats


def test_environment_wins_over_files_and_config_over_both(tmp_path: Path) -> None:
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text(
        "[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = FILESECRET\n"
        "[other]\naws_access_key_id = OTHERKEY\naws_secret_access_key = OTHERSECRET\n")
    (tmp_path / ".aws" / "config").write_text(
        "[default]\nregion = eu-west-1\n[profile other]\nregion = ap-south-1\n"
        "endpoint_url = http://127.0.0.1:9000\n")
    env = {"HOME": str(tmp_path)}
    assert resolve(StoreConfig(), env) == {"access_key_id": "FILEKEY",
                                           "secret_access_key": "FILESECRET",
                                           "region": "eu-west-1"}
    env["AWS_PROFILE"] = "other"
    got = resolve(StoreConfig(), env)
    assert got["access_key_id"] == "OTHERKEY" and got["region"] == "ap-south-1"
    assert got["endpoint"] == "http://127.0.0.1:9000"
    env.update(AWS_ACCESS_KEY_ID="ENVKEY", AWS_SECRET_ACCESS_KEY="ENVSECRET",
               AWS_DEFAULT_REGION="us-west-2", AWS_ENDPOINT_URL="http://127.0.0.1:1")
    got = resolve(StoreConfig(), env)
    assert (got["access_key_id"], got["region"], got["endpoint"]) == (
        "ENVKEY", "us-west-2", "http://127.0.0.1:1")
    got = resolve(StoreConfig(endpoint="http://127.0.0.1:2", region="r"), env)
    assert (got["endpoint"], got["region"]) == ("http://127.0.0.1:2", "r")


def test_a_key_without_a_secret_is_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no secret access key"):
        resolve(StoreConfig(), {"HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": "K"})


def test_store_urls_and_anchors() -> None:
    assert split_url("s3://bucket/a/b/") == ("bucket", "a/b")
    assert split_url("s3://bucket") == ("bucket", "")
    assert is_store_url("s3://b/p") and not is_store_url("/srv/backups")
    assert describe("s3://b/p/") == "s3://b/p" and describe("rel") == os.path.abspath("rel")
    assert _recursive_anchor("backups/main/ID/database/base/1") == "backups/main/ID"
    assert _recursive_anchor("wal/main") == "wal/main"
    assert _recursive_anchor("backups/main") is None and _recursive_anchor("") is None


def test_cached_chunks_are_checked_and_a_torn_one_is_never_served(tmp_path: Path) -> None:
    cache = ChunkCache(str(tmp_path), 1 << 30)
    oid = ChunkCache.object_id("e", "b", "p", "k", 10, "etag")
    assert cache.read(oid, 0, 0, 10) is None
    cache.write(oid, 0, b"0123456789")
    assert cache.read(oid, 0, 2, 5) == b"23456"
    assert cache.read(oid, 0, 8, 100) == b"89"
    other = ChunkCache.object_id("e", "b", "p", "k", 10, "another-etag")  # replaced object
    assert other != oid and cache.read(other, 0, 0, 10) is None
    # a chunk damaged on disk (a torn write, a flipped bit) is dropped, not served
    bad = ChunkCache.object_id("x")
    cache.write(bad, 3, b"abcdef")
    path = Path(cache._path(bad, 3))
    raw = bytearray(path.read_bytes())
    raw[1] ^= 0xFF
    path.write_bytes(bytes(raw))
    fresh = ChunkCache(str(tmp_path), 1 << 30)
    assert fresh.read(bad, 3, 0, 6) is None and not path.exists()
    path.write_bytes(b"ab")  # shorter than its trailer
    assert fresh.read(bad, 3, 0, 2) is None
    assert TRAILER.size == 12 and CHUNK % 8192 == 0


def test_sweep_evicts_the_least_recently_used(tmp_path: Path) -> None:
    cache = ChunkCache(str(tmp_path), 5 * 1000)
    for i in range(10):
        cache.write(ChunkCache.object_id(i), 0, bytes(1000))
        path = cache._path(ChunkCache.object_id(i), 0)
        os.utime(path, (1000 + i, 1000 + i))  # older first
    removed = cache.sweep()
    assert removed > 0
    left = [i for i in range(10) if os.path.exists(cache._path(ChunkCache.object_id(i), 0))]
    assert left == list(range(10 - len(left), 10))  # the newest survive
    assert sum(os.path.getsize(cache._path(ChunkCache.object_id(i), 0)) for i in left) <= 4500


def test_a_directory_location_answers_like_an_object_store(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "a").write_bytes(b"xyz")
    (tmp_path / "link").symlink_to("a")
    loc = location(str(tmp_path))
    assert isinstance(loc, Path)
    assert files_with_sizes(loc) == [("a", 3), ("link", 3)]
    assert file_size(loc / "a") == 3 and file_size(loc / "d") is None
    assert file_size(loc / "missing") is None
    assert files_with_sizes(loc / "missing") == []


def test_latency_percentiles() -> None:
    s = StoreStats()
    s.latency_ms[3] = 98  # 5 ms bucket
    s.latency_ms[8] = 2  # 200 ms bucket
    assert s.percentile(0.5) == 5 and s.percentile(0.99) == 200
    assert StoreStats().percentile(0.5) == 0.0


def _hammer(root: str, seed: int) -> int:
    """Write and read the same chunks as the other processes; count wrong bytes seen."""
    import random

    cache = ChunkCache(root, 1 << 30, open_files=4)
    rng = random.Random(seed)
    wrong = 0
    for _ in range(300):
        n = rng.randrange(8)
        data = bytes([n]) * (1000 + n)  # every writer writes the same bytes for chunk n
        if rng.random() < 0.5:
            cache.write(ChunkCache.object_id(n), 0, data)
        got = cache.read(ChunkCache.object_id(n), 0, 0, len(data))
        if got is not None and got != data:
            wrong += 1
    return wrong


def test_processes_sharing_the_cache_never_see_a_partial_chunk(tmp_path: Path) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        assert pool.starmap(_hammer, [(str(tmp_path), s) for s in range(4)]) == [0, 0, 0, 0]
    assert not list(tmp_path.glob("*/*.tmp"))  # no temporary file left behind


def _hold_fetch_claim(root: str, oid: str, held: object, go: object, marker: str) -> None:
    """Take the host-wide claim on chunks 0..3 of `oid`, say so, hold it until `go`."""
    cache = ChunkCache(root, 1 << 30)
    with cache.fetching(oid, 0, 3, wait=5) as claimed:
        assert claimed
        held.set()  # type: ignore[attr-defined]
        go.wait(60)  # type: ignore[attr-defined]
        Path(marker).write_text("released")  # written before the claim goes


def test_one_process_at_a_time_fetches_a_chunk(tmp_path: Path) -> None:
    """ChunkCache.fetching: another process's claim on overlapping chunks of the same object
    is waited for (then the chunk is found in the cache), a claim on other chunks or other
    objects is not; a holder that never lets go is waited for only `wait` seconds, and a
    killed holder's claim goes with it."""
    import multiprocessing
    import signal
    import threading

    ctx = multiprocessing.get_context("spawn")
    cache = ChunkCache(str(tmp_path), 1 << 30)
    oid, other = ChunkCache.object_id("a"), ChunkCache.object_id("b")
    held, go = ctx.Event(), ctx.Event()
    marker = tmp_path / "released"
    holder = ctx.Process(target=_hold_fetch_claim, args=(str(tmp_path), oid, held, go,
                                                         str(marker)))
    holder.start()
    try:
        assert held.wait(60)
        with cache.fetching(oid, 2, 2, wait=0.2) as claimed:
            assert not claimed  # held elsewhere: not waited for past `wait`
        # ... nor once the chunks are cached by someone else (else the suite's timeout fires)
        with cache.fetching(oid, 2, 2, wait=3600, done=lambda: True) as claimed:
            assert not claimed
        with cache.fetching(oid, 4, 9, wait=0.2) as claimed:
            assert claimed  # other chunks of the same object
        with cache.fetching(other, 0, 3, wait=0.2) as claimed:
            assert claimed  # another object
        seen: list[tuple[bool, bool]] = []

        def waiter() -> None:
            with cache.fetching(oid, 3, 5, wait=60) as claimed:
                seen.append((claimed, marker.exists()))

        t = threading.Thread(target=waiter)
        t.start()
        go.set()
        t.join(60)
        assert seen == [(True, True)]  # waited until the holder let go
    finally:
        go.set()
        holder.join(60)
    assert holder.exitcode == 0
    held, go = ctx.Event(), ctx.Event()
    killed = ctx.Process(target=_hold_fetch_claim, args=(str(tmp_path), oid, held, go,
                                                         str(marker)))
    killed.start()
    assert held.wait(60)
    assert killed.pid is not None
    os.kill(killed.pid, signal.SIGKILL)
    killed.join(60)
    with cache.fetching(oid, 0, 0, wait=60) as claimed:
        assert claimed
