"""One bucket and prefix of an S3-compatible store, read through the host's chunk cache.

Listings are made once per process and directory; below a backup directory
(`backups/<instance>/<id>/...`) and in a WAL archive (`wal/<instance>`) one recursive
listing fills every subdirectory at once (a backup has thousands of files in a few
directories; one listed request per thousand files instead of one per directory).
Objects are identified by key, size and ETag, so a cached chunk of an object that was
replaced is never served. Reads are aligned to cache chunks; the chunks a read misses
are fetched with one ranged GET per run of neighbours (at most MAX_REQUEST bytes); while
reads of an object go on where the previous ones were, the chunks after them are fetched
in the background (doubling up to MAX_READAHEAD). A chunk is fetched by one thread at a
time: others that need it wait for that fetch (and fetch it themselves if it fails); and
by one process of the host at a time (`ChunkCache.fetching`): a mount's start-up prefetch
and its workers, or two mounts of one backup, do not fetch the same bytes twice.
Every request is retried (throttling, 5xx, timeouts, dropped
connections, a body cut short or of the wrong length) with exponential backoff and
jitter, up to store.max_retries times. A read that
finally fails raises CatalogError naming the object and the range: served as EIO plus a
log line, never as wrong or partial bytes.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import msgspec

from pbkfs.errors import CatalogError
from pbkfs.storage import stats
from pbkfs.storage.chunkcache import CHUNK, ChunkCache
from pbkfs.storage.s3config import resolve
from pbkfs.storage.settings import current

MAX_REQUEST = 4 << 20  # bytes of one ranged GET
FIRST_READAHEAD = 4  # chunks fetched ahead when a read continues the previous one
MAX_READAHEAD = 16 << 20  # bytes fetched ahead of a scan, at most (in MAX_REQUEST requests)
READAHEAD_THREADS = 4  # background fetches of one store at a time
MAX_BACKOFF = 2.0  # seconds between two attempts of one request, at most (before jitter)
SCHEME = "s3://"


class Meta(msgspec.Struct, frozen=True):
    size: int
    etag: str


class Listing(msgspec.Struct):
    dirs: set[str]
    files: dict[str, Meta]


def split_url(url: str) -> tuple[str, str]:
    """(bucket, prefix without slashes) of `s3://BUCKET[/PREFIX]`; UsageError-free: the
    caller names the argument."""
    rest = url[len(SCHEME):]
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


def _is_not_found(exc: BaseException) -> bool:
    return type(exc).__name__ == "NotFoundError" or "not found" in str(exc).lower()


class BucketStore:
    """Reads of `s3://bucket/prefix`; thread-safe; one per process and URL (`store_for`)."""

    def __init__(self, url: str) -> None:
        import obstore.store

        self.url = url.rstrip("/")
        self.bucket, self.prefix = split_url(url)
        cfg = current()
        conn = resolve(cfg)
        config: dict[str, Any] = {"virtual_hosted_style_request": False}
        if "endpoint" in conn:
            config["endpoint"] = conn["endpoint"]
        config["region"] = conn.get("region", "us-east-1")
        for key in ("access_key_id", "secret_access_key", "session_token"):
            if key in conn:
                config[key] = conn[key]
        if "access_key_id" not in conn:
            config["skip_signature"] = True  # anonymous: a public bucket
        client: dict[str, Any] = {
            "timeout": timedelta(seconds=cfg.request_timeout),
            "connect_timeout": timedelta(seconds=min(5.0, cfg.request_timeout)),
            "allow_http": conn.get("endpoint", "").startswith("http://"),
        }
        retry: dict[str, Any] = {
            "max_retries": min(2, cfg.max_retries),
            "retry_timeout": timedelta(seconds=cfg.request_timeout * (cfg.max_retries + 1)),
            "backoff": {"init_backoff": timedelta(milliseconds=100),
                        "max_backoff": timedelta(seconds=5), "base": 2},
        }
        self._store = obstore.store.S3Store(
            self.bucket, prefix=self.prefix or None, config=config,  # type: ignore[arg-type]
            client_options=client, retry_config=retry)  # type: ignore[arg-type]
        self.endpoint = conn.get("endpoint", "aws")
        self.retries = cfg.max_retries
        self.cache = ChunkCache(cfg.cache_dir, cfg.cache_size_mb << 20)
        self._listings: dict[str, Listing] = {}
        self._lock = threading.Lock()
        self._next: OrderedDict[str, tuple[int, int]] = OrderedDict()  # key: (chunk, ahead)
        self._inflight: dict[tuple[str, int], Future[bytes]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self.wait_limit = cfg.request_timeout * (cfg.max_retries + 2)
        self.lock_wait = cfg.request_timeout  # for another process's fetch of a chunk

    def where(self, rel: str) -> str:
        return f"{self.url}/{rel}" if rel else self.url

    # -- listing ------------------------------------------------------------------------

    def listing(self, rel_dir: str) -> Listing:
        """Subdirectories and objects directly under `rel_dir` ("" = the prefix itself)."""
        with self._lock:
            got = self._listings.get(rel_dir)
        if got is not None:
            return got
        anchor = _recursive_anchor(rel_dir)
        if anchor is not None:
            self._list_recursive(anchor)
            with self._lock:
                return self._listings.setdefault(rel_dir, Listing(set(), {}))
        got = self._list_one(rel_dir)
        with self._lock:
            return self._listings.setdefault(rel_dir, got)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One store request, retried on any failure but a missing object: obstore retries
        what fails before a response arrives, not a body cut short while it is read."""
        for attempt in range(self.retries + 1):
            start = time.monotonic()
            try:
                out = fn(*args, **kwargs)
            except BadLength as exc:
                failure: Exception = exc
            except Exception as exc:
                if _is_not_found(exc):
                    stats.record_request(time.monotonic() - start, 0, True)
                    raise FileNotFoundError(2, "No such object", what) from None
                failure = exc
            else:
                stats.record_request(time.monotonic() - start, _size(out), True)
                return out
            stats.record_request(time.monotonic() - start, 0, False)
            if attempt < self.retries:
                stats.record_retry()
                jitter = 0.5 + int.from_bytes(os.urandom(2), "little") / 65536
                time.sleep(min(MAX_BACKOFF, 0.1 * 2 ** attempt) * jitter)
        raise CatalogError(what, f"object store request failed {self.retries + 1} times, last: "
                           f"{_short(failure)}")

    def _list_one(self, rel_dir: str) -> Listing:
        import obstore

        prefix = f"{rel_dir}/" if rel_dir else None
        found = self._call(self.where(rel_dir), obstore.list_with_delimiter, self._store,
                           prefix)
        out = Listing(set(), {})
        for p in found["common_prefixes"]:
            out.dirs.add(p.rstrip("/").rsplit("/", 1)[-1])
        for meta in found["objects"]:
            name = meta["path"].rsplit("/", 1)[-1]
            out.files[name] = Meta(int(meta["size"]), str(meta.get("e_tag") or ""))
        return out

    def _list_recursive(self, anchor: str) -> None:
        import obstore

        with self._lock:
            if anchor in self._listings:
                return
        listings: dict[str, Listing] = {anchor: Listing(set(), {})}

        def collect() -> None:
            for batch in obstore.list(self._store, f"{anchor}/", chunk_size=1000):
                for meta in batch:
                    path = str(meta["path"])
                    parent, _, name = path.rpartition("/")
                    listings.setdefault(parent, Listing(set(), {})).files[name] = Meta(
                        int(meta["size"]), str(meta.get("e_tag") or ""))
                    while parent != anchor and "/" in parent:  # every level up to the anchor
                        up, _, sub = parent.rpartition("/")
                        listings.setdefault(up, Listing(set(), {})).dirs.add(sub)
                        parent = up

        self._call(self.where(anchor), collect)
        with self._lock:
            for key, value in listings.items():
                self._listings.setdefault(key, value)

    def meta(self, rel: str) -> Meta | None:
        parent, _, name = rel.rpartition("/")
        return self.listing(parent).files.get(name)

    def is_dir(self, rel: str) -> bool:
        if rel == "":
            return True
        parent, _, name = rel.rpartition("/")
        return name in self.listing(parent).dirs

    # -- reading ------------------------------------------------------------------------

    def read(self, rel: str, meta: Meta, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of object `rel` (fewer only at its end)."""
        end = min(meta.size, offset + length)
        if offset >= end:
            return b""
        oid = ChunkCache.object_id(self.endpoint, self.bucket, self.prefix, rel, meta.size,
                                   meta.etag)
        first, last = offset // CHUNK, (end - 1) // CHUNK
        ahead = self._readahead(rel, first, last)
        parts: dict[int, bytes] = {}
        missing: list[int] = []
        for c in range(first, last + 1):
            lo = offset - c * CHUNK if c == first else 0
            hi = end - c * CHUNK if c == last else CHUNK
            got = self.cache.read(oid, c, lo, hi - lo)
            if got is not None and len(got) == hi - lo:
                parts[c] = got
            else:
                missing.append(c)
        stats.record_cache(len(parts), len(missing))
        n_chunks = (meta.size + CHUNK - 1) // CHUNK
        if missing:
            # the window ahead rides along in the same request (a scan's next reads) ...
            extra = [c for c in range(last + 1, min(n_chunks, last + 1 + ahead))
                     if not self.cache.has(oid, c)]
            fetched = self._fetch_or_wait(rel, meta, oid, missing + extra)
            for c in missing:
                lo = offset - c * CHUNK if c == first else 0
                hi = end - c * CHUNK if c == last else CHUNK
                parts[c] = fetched[c][lo:hi]
        if ahead:  # ... and the window after it is fetched in the background
            self._prefetch(rel, meta, oid, list(range(last + 1 + ahead,
                                                      min(n_chunks, last + 1 + 2 * ahead))))
        return b"".join(parts[c] for c in range(first, last + 1))

    def _readahead(self, rel: str, first: int, last: int) -> int:
        """Chunks to fetch ahead of this read: none for a random read; while reads go on
        where the previous ones were (the same or the next chunk: a scan's reads arrive
        slightly out of order from several threads), doubling up to MAX_READAHEAD."""
        with self._lock:
            prev = self._next.pop(rel, None)
            ahead = 0
            if prev is not None and prev[0] <= first <= prev[0] + 1:
                ahead = min(max(FIRST_READAHEAD, prev[1] * 2), MAX_READAHEAD // CHUNK)
            self._next[rel] = (max(last, prev[0] if prev else last), ahead)
            while len(self._next) > 256:
                self._next.popitem(last=False)
        return ahead

    # -- fetching: one fetch per chunk at a time, in this thread or in the background ----

    def _claim(self, oid: str, chunks: list[int]) -> tuple[list[int], dict[int, Future[bytes]]]:
        """The chunks this thread is now to fetch, and the fetches of others to wait for."""
        mine: list[int] = []
        theirs: dict[int, Future[bytes]] = {}
        with self._lock:
            for c in chunks:
                fut = self._inflight.get((oid, c))
                if fut is None:
                    self._inflight[(oid, c)] = Future()
                    mine.append(c)
                else:
                    theirs[c] = fut
        return mine, theirs

    def _fetch_claimed(self, rel: str, meta: Meta, oid: str, chunks: list[int]
                       ) -> dict[int, bytes]:
        """Fetch claimed chunks and hand them to the threads waiting for them. A chunk that
        another fetch cached between this thread's look at the cache and its claim (that
        fetch writes the cache before it lets go of its claim) is read from the cache."""
        data: dict[int, bytes] = {}
        try:
            # host-wide too: a chunk another process is fetching is waited for, then read
            with self.cache.fetching(oid, min(chunks), max(chunks), self.lock_wait,
                                     lambda: all(self.cache.has(oid, c) for c in chunks)):
                for c in chunks:
                    want = min(CHUNK, meta.size - c * CHUNK)
                    got = self.cache.read(oid, c, 0, want)
                    if got is not None and len(got) == want:
                        data[c] = got
                data.update(self._fetch_chunks(rel, meta, oid, [c for c in chunks
                                                                if c not in data]))
        except BaseException as exc:
            with self._lock:
                futures = [self._inflight.pop((oid, c)) for c in chunks]
            for fut in futures:
                fut.set_exception(exc)
            raise
        with self._lock:
            done = {c: self._inflight.pop((oid, c)) for c in chunks}
        for c, fut in done.items():
            fut.set_result(data[c])
        return data

    def _fetch_or_wait(self, rel: str, meta: Meta, oid: str, chunks: list[int]
                       ) -> dict[int, bytes]:
        mine, theirs = self._claim(oid, chunks)
        out = self._fetch_claimed(rel, meta, oid, mine) if mine else {}
        for c, fut in theirs.items():
            try:
                out[c] = fut.result(timeout=self.wait_limit)
            except Exception:  # a read-ahead that failed or is stuck: fetch it here
                out.update(self._fetch_chunks(rel, meta, oid, [c]))
        return out

    def _prefetch(self, rel: str, meta: Meta, oid: str, chunks: list[int]) -> None:
        """Fetch chunks in the background (read-ahead), one request per MAX_REQUEST."""
        wanted = [c for c in chunks if not self.cache.has(oid, c)]
        mine, _ = self._claim(oid, wanted)
        per_request = MAX_REQUEST // CHUNK
        for i in range(0, len(mine), per_request):
            self._pool().submit(self._fetch_quietly, rel, meta, oid, mine[i:i + per_request])

    def _fetch_quietly(self, rel: str, meta: Meta, oid: str, chunks: list[int]) -> None:
        with contextlib.suppress(Exception):  # the read that needs it fetches again
            self._fetch_claimed(rel, meta, oid, chunks)

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(READAHEAD_THREADS,
                                                    thread_name_prefix="readahead")
            return self._executor

    def _fetch_chunks(self, rel: str, meta: Meta, oid: str, chunks: list[int]
                      ) -> dict[int, bytes]:
        """Fetch whole chunks, one request per run of neighbours, and cache them."""
        out: dict[int, bytes] = {}
        per_request = MAX_REQUEST // CHUNK
        runs: list[list[int]] = []
        for c in sorted(set(chunks)):
            if runs and c == runs[-1][-1] + 1 and len(runs[-1]) < per_request:
                runs[-1].append(c)
            else:
                runs.append([c])
        for run in runs:
            start = run[0] * CHUNK
            stop = min(meta.size, (run[-1] + 1) * CHUNK)
            data = self._get_range(rel, start, stop)
            for c in run:
                piece = data[(c - run[0]) * CHUNK:(c - run[0] + 1) * CHUNK]
                self.cache.write(oid, c, piece)
                out[c] = piece
        return out

    def _get_range(self, rel: str, start: int, stop: int) -> bytes:
        import obstore

        def get() -> bytes:
            data = bytes(obstore.get_range(self._store, rel, start=start, end=stop))
            if len(data) != stop - start:
                raise BadLength(f"the store answered {len(data)} bytes for a range of "
                                f"{stop - start}")
            return data

        try:
            data: bytes = self._call(f"{self.where(rel)} bytes {start}-{stop}", get)
        except FileNotFoundError:
            raise CatalogError(self.where(rel), "object is missing from the store") from None
        return data

    def read_all(self, rel: str) -> bytes:
        meta = self.meta(rel)
        if meta is None:
            raise FileNotFoundError(2, "No such object", self.where(rel))
        return self.read(rel, meta, 0, meta.size)


class BadLength(Exception):
    """A body shorter or longer than the range asked for (a connection cut mid-body)."""


def _size(out: Any) -> int:
    return len(out) if isinstance(out, bytes) else 0


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:300] + "..."


def _recursive_anchor(rel_dir: str) -> str | None:
    """The directory listed recursively for `rel_dir`: its backup directory
    (backups/<instance>/<id>) or its WAL archive (wal/<instance>); None for the levels
    above them (listed one at a time)."""
    parts = rel_dir.split("/") if rel_dir else []
    if len(parts) >= 3 and parts[0] == "backups":
        return "/".join(parts[:3])
    if len(parts) >= 2 and parts[0] == "wal":
        return "/".join(parts[:2])
    return None


_stores: dict[str, BucketStore] = {}
_stores_lock = threading.Lock()


def store_for(url: str) -> BucketStore:
    """The process's one BucketStore of `url` (its listings and client shared by all)."""
    key = url.rstrip("/")
    with _stores_lock:
        got = _stores.get(key)
        if got is None:
            got = _stores[key] = BucketStore(key)
        return got
