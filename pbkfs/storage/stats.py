"""What this process's object-store reads cost: requests, bytes, cache hits, latency.

Counted per process; `pbkfs stat` shows the sum over a mount's processes (each worker
reports its own with its other figures)."""

from __future__ import annotations

import threading

import msgspec

# Latency histogram buckets (upper bounds, ms): enough resolution for p50/p99 of a
# loopback server (sub-ms) and of a remote store (tens to hundreds of ms).
BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000,
              float("inf"))


class StoreStats(msgspec.Struct):
    requests: int = 0
    retries: int = 0
    failures: int = 0
    bytes_fetched: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    latency_ms: list[int] = msgspec.field(default_factory=lambda: [0] * len(BUCKETS_MS))

    def add(self, other: StoreStats) -> None:
        self.requests += other.requests
        self.retries += other.retries
        self.failures += other.failures
        self.bytes_fetched += other.bytes_fetched
        self.cache_hits += other.cache_hits
        self.cache_misses += other.cache_misses
        self.latency_ms = [a + b for a, b in zip(self.latency_ms, other.latency_ms,
                                                 strict=True)]

    def percentile(self, q: float) -> float:
        """Upper bound (ms) of the bucket holding the q-th fraction of requests; 0 if none."""
        total = sum(self.latency_ms)
        if not total:
            return 0.0
        seen = 0
        for bound, n in zip(BUCKETS_MS, self.latency_ms, strict=True):
            seen += n
            if seen >= q * total:
                return bound
        return BUCKETS_MS[-1]


_lock = threading.Lock()
_stats = StoreStats()


def record_request(seconds: float, nbytes: int, ok: bool) -> None:
    ms = seconds * 1000
    with _lock:
        _stats.requests += 1
        if ok:
            _stats.bytes_fetched += nbytes
        else:
            _stats.failures += 1
        for i, bound in enumerate(BUCKETS_MS):
            if ms <= bound:
                _stats.latency_ms[i] += 1
                break


def record_retry() -> None:
    with _lock:
        _stats.retries += 1


def record_cache(hits: int, misses: int) -> None:
    with _lock:
        _stats.cache_hits += hits
        _stats.cache_misses += misses


def snapshot() -> StoreStats:
    with _lock:
        return msgspec.structs.replace(_stats, latency_ms=list(_stats.latency_ms))
