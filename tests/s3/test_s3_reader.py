"""The object-store reader on its own, many threads at once, through a faulty proxy:
every read returns exactly the object's bytes (ranges, scans, the object's end), each
chunk is fetched once, and read-ahead runs ahead of a scan."""

from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import obstore
import pytest
from obstore.store import S3Store

from pbkfs.config import StoreConfig
from pbkfs.storage.chunkcache import CHUNK
from pbkfs.storage.objectstore import BucketStore
from pbkfs.storage.settings import configure, current
from tests.support.s3proxy import FaultProxy
from tests.support.s3server import S3Server

SIZE = 9 * CHUNK + 1234  # an object whose last chunk is short


@pytest.fixture
def reader(s3_server: S3Server, fault_proxy: FaultProxy, bucket: str, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> tuple[BucketStore, bytes]:
    data = random.Random(1).randbytes(SIZE)
    obstore.put(S3Store(bucket, **s3_server.store_kwargs()), "cat/obj", data)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    before = current()
    configure(StoreConfig(endpoint=fault_proxy.endpoint, cache_dir=str(tmp_path / "cache"),
                          request_timeout=5, max_retries=10))
    try:
        store = BucketStore(f"s3://{bucket}")
    finally:
        configure(before)
    return store, data


def test_concurrent_reads_are_exact_and_fetch_each_chunk_once(
        reader: tuple[BucketStore, bytes], fault_proxy: FaultProxy) -> None:
    store, data = reader
    meta = store.meta("cat/obj")
    assert meta is not None and meta.size == SIZE
    rng = random.Random(2)
    reads = [(rng.randrange(SIZE), rng.randrange(1, 3 * CHUNK)) for _ in range(300)]
    reads += [(off, 8192) for off in range(0, SIZE, 8192)]  # a scan
    reads += [(SIZE - 10, 100), (SIZE, 10), (0, SIZE)]  # the end, past it, everything
    rng.shuffle(reads)
    fetched: list[tuple[int, int]] = []
    get_range = store._get_range

    def counting(rel: str, start: int, stop: int) -> bytes:
        fetched.append((start, stop))
        return get_range(rel, start, stop)

    store._get_range = counting  # type: ignore[method-assign]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda r: store.read("cat/obj", meta, *r), reads))
    for (off, n), out in zip(reads, got, strict=True):
        assert out == data[off:off + n], (off, n)
    store._pool().shutdown(wait=True)
    assert sum(stop - start for start, stop in fetched) == SIZE, "each chunk fetched once"


def test_faults_are_retried_and_never_served(reader: tuple[BucketStore, bytes],
                                             fault_proxy: FaultProxy) -> None:
    store, data = reader
    meta = store.meta("cat/obj")
    assert meta is not None
    fault_proxy.seed = 3
    fault_proxy.faults = {"500", "503", "drop", "reset", "truncate"}
    fault_proxy.fail_rate = 0.4
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda off: store.read("cat/obj", meta, off, CHUNK + 7),
                            range(0, SIZE, CHUNK // 2)))
    for off, out in zip(range(0, SIZE, CHUNK // 2), got, strict=True):
        assert out == data[off:off + CHUNK + 7]
    assert fault_proxy.faulted > 0


def test_a_scan_reads_ahead(reader: tuple[BucketStore, bytes]) -> None:
    store, data = reader
    meta = store.meta("cat/obj")
    assert meta is not None
    for off in range(0, 3 * CHUNK, 8192):  # a scan of the first chunks
        assert store.read("cat/obj", meta, off, 8192) == data[off:off + 8192]
    oid = store.cache.object_id(store.endpoint, store.bucket, store.prefix, "cat/obj",
                                meta.size, meta.etag)
    store._pool().shutdown(wait=True)  # the background fetches have finished
    assert all(store.cache.has(oid, c) for c in range(3, 7)), os.listdir(store.cache.root)


def _read_whole(url: str, endpoint: str, cache_dir: str, start: object) -> tuple[int, bool]:
    """In a process of its own: read the object once; (bytes this process fetched, exact)."""
    from pbkfs.storage import stats

    configure(StoreConfig(endpoint=endpoint, cache_dir=cache_dir, request_timeout=30,
                          max_retries=3))
    store = BucketStore(url)
    meta = store.meta("cat/obj")
    assert meta is not None
    start.wait(60)  # type: ignore[attr-defined]
    data = store.read("cat/obj", meta, 0, meta.size)
    expected = random.Random(1).randbytes(SIZE)
    return stats.snapshot().bytes_fetched, data == expected


def test_processes_sharing_the_cache_fetch_each_chunk_once(
        reader: tuple[BucketStore, bytes], fault_proxy: FaultProxy, bucket: str,
        tmp_path: Path) -> None:
    """Two processes of the host (a mount's prefetch and its worker, two mounts) reading the
    same object at once: one fetches, the other waits for it and reads the cache."""
    import multiprocessing

    fault_proxy.latency = 0.3  # both are in flight together
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Manager().Event()
    with ctx.Pool(2) as pool:
        results = pool.starmap_async(_read_whole, [
            (f"s3://{bucket}", fault_proxy.endpoint, str(tmp_path / "cache"), start)] * 2)
        time.sleep(1.0)  # both processes have listed the bucket and wait at the start
        start.set()
        got = results.get(120)
    assert all(exact for _, exact in got), got
    assert sum(n for n, _ in got) == SIZE, got  # each chunk fetched once on the host
