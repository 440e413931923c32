"""Which S3 client for pbkfs's reads: obstore or boto3, on many small concurrent range reads.

    python -m tools.bench_s3client [--requests 2000] [--threads 1,4,16] [--rounds 3]
        [--big-reads 64] [--big-threads 1,4] [--out tools/bench_results/s3client.md]

A mount reads a backup's files as ranges of objects, from many threads. Against a SeaweedFS
on loopback (tests/support/s3server.py) holding one 64 MiB object, each client does N random
8 KiB range reads (8 KiB aligned, the same offsets for both) with 1, 4 and 16 threads, and
2 MiB range reads for throughput. obstore: the sync `get_range` (and `get_ranges`, 16 ranges
per call) from threads, one store shared; boto3: `get_object(Range=...)`, one client shared.
CPU is this process's `time.process_time` (every thread, obstore's runtime threads too) per
request or per MB; the server's CPU is weed's utime+stime. Configurations alternate between
the clients and the whole sequence repeats --rounds times; each cell is the round with the
median throughput. Import and client-creation times are measured in fresh interpreters.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.s3server import S3Server
from tools.benchreport import cpu_model, write_report

REPO = Path(__file__).resolve().parent.parent
BUCKET = "bench"
KEY = "blob"
OBJECT_SIZE = 64 * 1024 * 1024
SMALL = 8192
BIG = 2 * 1024 * 1024
BATCH = 16  # ranges per obstore.get_ranges call
STARTUP_RUNS = 5
WARMUP = 32

Reader = Callable[[list[int], int], int]  # (offsets, size) -> bytes read


@dataclass
class Result:
    client: str
    mode: str
    threads: int
    requests: int  # ranges read
    calls: int  # client calls (a get_ranges call reads BATCH ranges)
    size: int
    wall: float
    cpu: float
    server_cpu: float
    latencies: list[float] = field(repr=False)

    @property
    def per_second(self) -> float:
        return self.requests / self.wall

    @property
    def mb_per_second(self) -> float:
        return self.requests * self.size / 1e6 / self.wall

    def pct(self, q: float) -> float:
        """The q-quantile of per-call latency in ms."""
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- clients -----------------------------------------------------------------------------

def obstore_reader(s3: S3Server, batch: int = 1) -> Reader:
    import obstore
    from obstore.store import S3Store

    store = S3Store(BUCKET, **s3.store_kwargs())

    def read(offsets: list[int], size: int) -> int:
        if batch == 1:
            return len(obstore.get_range(store, KEY, start=offsets[0], length=size))
        got = obstore.get_ranges(store, KEY, starts=offsets, lengths=[size] * len(offsets))
        return sum(len(b) for b in got)

    return read


def boto3_reader(s3: S3Server, pool: int) -> Reader:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key, region_name=s3.region,
        config=Config(max_pool_connections=pool, s3={"addressing_style": "path"},
                      retries={"max_attempts": 3, "mode": "standard"}))

    def read(offsets: list[int], size: int) -> int:
        rng = f"bytes={offsets[0]}-{offsets[0] + size - 1}"
        return len(client.get_object(Bucket=BUCKET, Key=KEY, Range=rng)["Body"].read())

    return read


# -- measuring -----------------------------------------------------------------------------

def server_cpu(s3: S3Server) -> float:
    """weed's user+system CPU seconds so far."""
    assert s3.proc is not None
    fields = Path(f"/proc/{s3.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(s3: S3Server, read: Reader, offsets: list[int], size: int, threads: int,
        batch: int) -> tuple[float, float, float, list[float]]:
    """(wall, CPU, server CPU, per-call latencies) of reading every offset."""
    calls = [offsets[i:i + batch] for i in range(0, len(offsets), batch)]
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[BaseException] = []
    pending = iter(calls)

    def worker() -> None:
        mine: list[float] = []
        try:
            while True:
                with lock:
                    call = next(pending, None)
                if call is None:
                    break
                t0 = time.perf_counter()
                got = read(call, size)
                mine.append(time.perf_counter() - t0)
                if got != size * len(call):
                    raise RuntimeError(f"short read: {got} of {size * len(call)} bytes")
        except BaseException as e:
            errors.append(e)
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    c0, s0, w0 = time.process_time(), server_cpu(s3), time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall, cpu, scpu = (time.perf_counter() - w0, time.process_time() - c0,
                       server_cpu(s3) - s0)
    if errors:
        raise errors[0]
    return wall, cpu, scpu, latencies


def offsets_for(n: int, size: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(0, (OBJECT_SIZE - size) // SMALL + 1) * SMALL for _ in range(n)]


def check(read: Reader, size: int) -> None:
    """The reader returns the right lengths (content is checked by verify_content)."""
    for off in offsets_for(WARMUP, size, seed=99):
        assert read([off], size) == size


def verify_content(s3: S3Server, blob: bytes) -> None:
    """A few ranges read back equal the uploaded bytes (both clients)."""
    import boto3
    import obstore
    from obstore.store import S3Store

    store = S3Store(BUCKET, **s3.store_kwargs())
    client = boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.access_key,
                          aws_secret_access_key=s3.secret_key, region_name=s3.region)
    for off in offsets_for(8, SMALL, seed=5):
        want = blob[off:off + SMALL]
        assert bytes(obstore.get_range(store, KEY, start=off, length=SMALL)) == want
        body = client.get_object(Bucket=BUCKET, Key=KEY, Range=f"bytes={off}-{off + SMALL - 1}")
        assert body["Body"].read() == want


# -- startup costs in fresh interpreters -------------------------------------------------

STARTUP_SCRIPTS = {
    "obstore": """
import json, time
t0 = time.perf_counter()
import obstore
from obstore.store import S3Store
t1 = time.perf_counter()
store = S3Store({bucket!r}, **{kwargs!r})
t2 = time.perf_counter()
obstore.get_range(store, {key!r}, start=0, length=8192)
t3 = time.perf_counter()
print(json.dumps([t1 - t0, t2 - t1, t3 - t2]))
""",
    "boto3": """
import json, time
t0 = time.perf_counter()
import boto3
t1 = time.perf_counter()
client = boto3.client("s3", endpoint_url={endpoint!r}, aws_access_key_id={ak!r},
                      aws_secret_access_key={sk!r}, region_name={region!r})
t2 = time.perf_counter()
client.get_object(Bucket={bucket!r}, Key={key!r}, Range="bytes=0-8191")["Body"].read()
t3 = time.perf_counter()
print(json.dumps([t1 - t0, t2 - t1, t3 - t2]))
""",
}


def startup(s3: S3Server, client: str) -> list[float]:
    """Median (import, create, first 8 KiB read) seconds over fresh interpreters."""
    script = STARTUP_SCRIPTS[client].format(
        bucket=BUCKET, key=KEY, kwargs=s3.store_kwargs(), endpoint=s3.endpoint,
        ak=s3.access_key, sk=s3.secret_key, region=s3.region)
    runs = []
    for _ in range(STARTUP_RUNS):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=120, check=True, env={**os.environ, "PYTHONPATH": ""})
        runs.append(json.loads(out.stdout))
    return [statistics.median(r[i] for r in runs) for i in range(3)]


# -- the sequence ------------------------------------------------------------------------

@dataclass
class Config:
    client: str
    mode: str  # "get_range" / "get_ranges" / "get_object"
    threads: int
    size: int
    n: int
    batch: int = 1


def configs(args: argparse.Namespace) -> list[Config]:
    small_modes = [("obstore", "get_range", 1), ("boto3", "get_object", 1)]
    out = [Config(c, m, t, SMALL, args.requests, b) for t in args.threads
           for c, m, b in small_modes]
    out += [Config("obstore", "get_ranges", t, SMALL, args.requests, BATCH)
            for t in args.threads if t <= 4]
    out += [Config(c, m, t, BIG, args.big_reads) for t in args.big_threads
            for c, m, _ in small_modes]
    return out


def measure(s3: S3Server, cfg: Config, readers: dict[tuple[str, int, int], Reader],
            seed: int) -> Result:
    key = (cfg.client, cfg.batch, cfg.threads)
    if key not in readers:
        readers[key] = (obstore_reader(s3, cfg.batch) if cfg.client == "obstore"
                        else boto3_reader(s3, pool=max(10, cfg.threads)))
    read = readers[key]
    check(read, cfg.size)
    offs = offsets_for(cfg.n, cfg.size, seed)
    wall, cpu, scpu, lat = run(s3, read, offs, cfg.size, cfg.threads, cfg.batch)
    return Result(cfg.client, cfg.mode, cfg.threads, len(offs), len(lat), cfg.size, wall, cpu,
                  scpu, lat)


def median_round(results: list[Result]) -> Result:
    ordered = sorted(results, key=lambda r: r.per_second)
    return ordered[len(ordered) // 2]


# -- report ------------------------------------------------------------------------------

def small_table(cells: list[Result]) -> list[str]:
    lines = ["| client | call | threads | req/s | client CPU ms/req | server CPU ms/req | "
             "p50 ms/call | p99 ms/call |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in cells:
        lines.append(f"| {r.client} | {r.mode} | {r.threads} | {r.per_second:,.0f} | "
                     f"{1000 * r.cpu / r.requests:.3f} | {1000 * r.server_cpu / r.requests:.3f} | "
                     f"{r.pct(0.5):.2f} | {r.pct(0.99):.2f} |")
    return lines


def big_table(cells: list[Result]) -> list[str]:
    lines = ["| client | threads | MB/s | client CPU ms/MB | server CPU ms/MB | p50 ms | p99 ms |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in cells:
        mb = r.requests * r.size / 1e6
        lines.append(f"| {r.client} | {r.threads} | {r.mb_per_second:,.0f} | "
                     f"{1000 * r.cpu / mb:.2f} | {1000 * r.server_cpu / mb:.2f} | "
                     f"{r.pct(0.5):.1f} | {r.pct(0.99):.1f} |")
    return lines


def versions(s3: S3Server) -> str:
    import boto3
    import botocore
    import obstore

    weed = subprocess.run([str(s3.weed), "version"], capture_output=True, text=True,
                          timeout=30, check=False).stdout.split("\n")[0].strip()
    return (f"obstore {obstore.__version__}, boto3 {boto3.__version__} (botocore "
            f"{botocore.__version__}), SeaweedFS `{weed}` (`weed {s3.command}`)")


def report(args: argparse.Namespace, s3: S3Server, cells: list[Result],
           starts: dict[str, list[float]], loads: list[float], rounds: list[list[Result]]
           ) -> list[str]:
    cmd = shlex.join([".venv/bin/python", "-m", "tools.bench_s3client", *sys.argv[1:]])
    small = [c for c in cells if c.size == SMALL]
    big = [c for c in cells if c.size == BIG]
    lines = [
        "# S3 client for range reads: obstore vs boto3",
        "",
        f"One {OBJECT_SIZE >> 20} MiB object on a SeaweedFS on loopback (started by "
        "tests/support/s3server.py, same machine). Small reads: "
        f"{args.requests} random {SMALL >> 10} KiB ranges ({SMALL >> 10} KiB aligned, the same "
        f"offsets for every client) per cell; obstore `get_ranges` reads them {BATCH} per call. "
        f"Big reads: {args.big_reads} random {BIG >> 20} MiB ranges. One store / client shared "
        "by the threads. Client CPU: this process's `time.process_time` (all threads, obstore's "
        "runtime threads included); server CPU: weed's utime+stime over the same interval. "
        f"Configurations alternate between the clients; the whole sequence ran {args.rounds} "
        "time(s) and each cell is the round with the median throughput.",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()}, "
        f"{versions(s3)}. Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"1-minute load average at the start of each round: "
        f"{', '.join(f'{x:.2f}' for x in loads)} (other work shared the machine: the client, "
        "the server and that work compete for the CPUs, so absolute rates are low and noisy; "
        "the per-request CPU is the steadier number).",
        "",
        "Command:",
        "",
        f"    {cmd}",
        "",
        f"## {SMALL >> 10} KiB range reads",
        "",
        *small_table(small),
        "",
        "req/s counts ranges; latency is per call. obstore `get_ranges` merges ranges less "
        "than 1 MiB apart into one request (object_store's coalescing) and reads the gaps too, "
        f"so {BATCH} scattered ranges of a {OBJECT_SIZE >> 20} MiB object cost a few large "
        "reads: it pays off for adjacent ranges, not for scattered blocks.",
        "",
        f"## {BIG >> 20} MiB range reads",
        "",
        *big_table(big),
        "",
        f"## Startup (fresh interpreter, median of {STARTUP_RUNS})",
        "",
        "| client | import ms | client creation ms | first 8 KiB read ms |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {name} | {1000 * s[0]:.0f} | {1000 * s[1]:.1f} | {1000 * s[2]:.1f} |"
          for name, s in starts.items()),
        "",
        "Import: `import obstore` + `from obstore.store import S3Store` vs `import boto3`. "
        "Creation: `S3Store(...)` vs `boto3.client('s3', ...)` (loads the service model). "
        "First read: includes connecting.",
        "",
        "## Requests per second in each round",
        "",
        "| client | call | threads | size | " + " | ".join(
            f"round {i + 1}" for i in range(len(rounds))) + " |",
        "| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in rounds) + " |",
    ]
    for i, c in enumerate(rounds[0]):
        per_round = " | ".join(f"{r[i].per_second:,.0f}" for r in rounds)
        lines.append(f"| {c.client} | {c.mode} | {c.threads} | {c.size >> 10} KiB | "
                     f"{per_round} |")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",")]

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--requests", type=int, default=2000, help="8 KiB reads per cell")
    ap.add_argument("--threads", type=ints, default=[1, 4, 16])
    ap.add_argument("--big-reads", type=int, default=64, help="2 MiB reads per cell")
    ap.add_argument("--big-threads", type=ints, default=[1, 4])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where the server keeps its data and log (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=REPO / "tools" / "bench_results" / "s3client.md")
    return ap.parse_args(argv)


def bench(args: argparse.Namespace, workdir: Path) -> list[str]:
    import obstore
    from obstore.store import S3Store

    with S3Server.start(workdir) as s3:
        s3.make_bucket(BUCKET)
        blob = os.urandom(OBJECT_SIZE)
        obstore.put(S3Store(BUCKET, **s3.store_kwargs()), KEY, blob)
        verify_content(s3, blob)
        starts = {name: startup(s3, name) for name in STARTUP_SCRIPTS}
        readers: dict[tuple[str, int, int], Reader] = {}
        rounds: list[list[Result]] = []
        loads: list[float] = []
        for number in range(args.rounds):
            loads.append(os.getloadavg()[0])
            rounds.append([measure(s3, cfg, readers, seed=number)
                           for cfg in configs(args)])
            print(f"round {number + 1}/{args.rounds} done", file=sys.stderr)
        cells = [median_round([r[i] for r in rounds]) for i in range(len(rounds[0]))]
        return report(args, s3, cells, starts, loads, rounds)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir is not None:
        lines = bench(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-s3client-") as tmp:
            lines = bench(args, Path(tmp))
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
