"""What this process's object-store reads cost: requests, bytes, cache hits, latency.

Counted per process; `pbkfs stat` shows the sum over a mount's processes (each worker
reports its own with its other figures)."""

from __future__ import annotations

import os
import threading
import time

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


# -- shared between the processes of a mount ----------------------------------------------
# Each worker publishes its figures to a file named after its pid in the mount's stats
# directory (a file per process: no locking, no IPC round trip); the mount process adds
# them up for `pbkfs stat` and removes the directory at exit.

PUBLISH_EVERY = 1.0  # seconds


def stats_dir(shm: str) -> str:
    """The stats directory of the mount whose shared-memory segment is `shm`."""
    base = "/run/pbkfs" if os.geteuid() == 0 else f"/tmp/pbkfs-{os.geteuid()}"
    return os.path.join(base, "store-stats", shm)


def start_publisher(directory: str) -> None:
    """Write this process's figures to `directory`/<pid>.json whenever they change."""

    def run() -> None:
        last: bytes = b""
        path = os.path.join(directory, f"{os.getpid()}.json")
        while True:
            time.sleep(PUBLISH_EVERY)
            data = msgspec.json.encode(snapshot())
            if data == last:
                continue
            try:
                os.makedirs(directory, mode=0o755, exist_ok=True)
                tmp = f"{path}.tmp"
                with open(tmp, "wb") as f:
                    f.write(data)
                os.rename(tmp, path)
                last = data
            except OSError:
                pass

    threading.Thread(target=run, name="store-stats", daemon=True).start()


def gathered(directory: str) -> StoreStats:
    """This process's figures plus those its workers published."""
    total = snapshot()
    try:
        names = os.listdir(directory)
    except OSError:
        return total
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(directory, name), "rb") as f:
                total.add(msgspec.json.decode(f.read(), type=StoreStats))
        except (OSError, msgspec.DecodeError):
            continue
    return total


def summary(s: StoreStats) -> dict[str, float | int]:
    """The figures `pbkfs stat` shows."""
    lookups = s.cache_hits + s.cache_misses
    return {"requests": s.requests, "retries": s.retries, "failures": s.failures,
            "bytes_fetched": s.bytes_fetched, "cache_hits": s.cache_hits,
            "cache_misses": s.cache_misses,
            "cache_hit_ratio": round(s.cache_hits / lookups, 3) if lookups else 0.0,
            "latency_p50_ms": s.percentile(0.5), "latency_p99_ms": s.percentile(0.99)}
