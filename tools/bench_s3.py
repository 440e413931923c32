"""A backup in a (local) S3 server mounted with pbkfs, against the same backup on local disk
and against downloading the whole catalog and restoring it.

    .venv/bin/python -m tools.bench_s3 [--scale 20] [--latency-ms 0,20] [--seconds 10]
        [--clients 8] [--rounds 3] [--out tools/bench_results/s3.md]

In one run: a PostgreSQL 15 cluster with `pgbench -i -s SCALE`, a FULL zlib `--stream`
backup by `tools.mkbackup`, uploaded with `tools.s3sync` to a SeaweedFS started on
loopback. For each added latency (a fault proxy between pbkfs and the server holds every
request that long), with an empty cache: `pbkfs mount -B s3://...` to PostgreSQL's first
answer, the bytes fetched from the store until then (`pbkfs stat`), the first full scan of
the never-read pgbench_accounts (MB/s of the table), and pgbench select-only once warm
(all mounts stay up; their runs alternate, round after round).
The same for a mount of the catalog on local disk (the baseline), and the time to download
the whole catalog through the same proxy, export it as restore writes it and start
PostgreSQL on the copy. Results go to a Markdown file with the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.mounting import force_unmount  # noqa: E402
from tests.support.postgres import (  # noqa: E402
    PgCluster,
    free_port,
    make_owned_dir,
    pg_workdir,
    prepare_datadir,
)
from tests.support.s3proxy import FaultProxy  # noqa: E402
from tests.support.s3server import S3Server  # noqa: E402
from tools.bench_mount import (  # noqa: E402
    Backup,
    du,
    export,
    first_query,
    first_scan,
    load1,
    log,
    make_backup,
    pgbench,
    prewarm,
)
from tools.s3sync import sync_dir  # noqa: E402

PY = sys.executable
BUCKET = "pbkfs-bench"


@dataclass
class Result:
    label: str
    mount_s: float | None = None
    first_query_s: float | None = None
    fetched: int | None = None  # bytes from the store up to the first answer
    requests: int | None = None
    scan_mb_s: float | None = None
    select_tps: float | None = None
    select_reads: int | None = None  # FUSE reads pbkfs answered during the select-only runs
    download_s: float | None = None


def pbkfs_stat(mnt: Path) -> dict[str, object]:
    out = subprocess.run([PY, "-m", "pbkfs.cli.entry", "stat", "-D", str(mnt), "--format",
                          "json"], capture_output=True, text=True, timeout=60, cwd=REPO)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def fuse_reads(mnt: Path) -> int:
    """Reads the mount has answered so far (hot path and worker round trips): warm reads
    of data in the kernel's page cache never reach it."""
    reads = pbkfs_stat(mnt).get("reads")
    if not isinstance(reads, dict):
        return 0
    return int(reads.get("frontend", 0)) + int(reads.get("worker", 0))


@dataclass
class Mounted:
    """A measured mount left running (with its PostgreSQL) for the select-only rounds."""

    res: Result
    data: Path
    diff: Path
    pg: PgCluster | None = None
    tps: list[float] = field(default_factory=list)

    def close(self) -> None:
        if self.pg is not None:
            self.pg.teardown()
        subprocess.run([PY, "-m", "pbkfs.cli.entry", "unmount", "-D", str(self.data)],
                       capture_output=True, timeout=600, cwd=REPO)
        force_unmount(self.data, self.diff)


def measure_mount(label: str, store: str, backup: Backup, run: Path, env: dict[str, str],
                  flags: tuple[str, ...] = ()) -> Mounted:
    """Mount, first answer, bytes fetched, first scan; left mounted and prewarmed."""
    make_owned_dir(run, 0o755)
    m = Mounted(Result(label), make_owned_dir(run / "data", 0o700), run / "diff")
    res = m.res
    cmd = [PY, "-m", "pbkfs.cli.entry", "mount", "-B", store, "--instance", backup.instance,
           "-i", backup.backup_id, "-D", str(m.data), "-d", str(m.diff), *flags]
    log(f"  load {load1():.2f}: {shlex.join(['pbkfs', *cmd[3:]])}")
    try:
        t0 = time.monotonic()
        subprocess.run(cmd, check=True, capture_output=True, timeout=600, cwd=REPO,
                       env={**os.environ, **env})
        res.mount_s = time.monotonic() - t0
        m.pg = PgCluster(m.data, free_port(), run / "sock")
        res.first_query_s = first_query(m.pg, t0)
        store_figures = pbkfs_stat(m.data).get("store")
        if isinstance(store_figures, dict):
            res.fetched = int(store_figures["bytes_fetched"])
            res.requests = int(store_figures["requests"])
        scan_s, size = first_scan(m.pg)
        res.scan_mb_s = size / 1e6 / scan_s
        prewarm(m.pg)
        log(f"  {label}: first query {res.first_query_s:.2f} s, fetched {res.fetched}, scan "
            f"{res.scan_mb_s:.0f} MB/s")
    except BaseException:
        m.close()
        raise
    return m


def close_all(mounts: list[Mounted]) -> None:
    for m in mounts:
        m.close()


def select_only_rounds(mounts: list[Mounted], rounds: int, clients: int,
                       seconds: int) -> None:
    """pgbench select-only on every mount in turn, `rounds` times (so a drift of the
    machine's speed during the run falls on all of them alike); the median per mount."""
    before = {id(m): fuse_reads(m.data) for m in mounts}
    for r in range(rounds):
        for m in (mounts if r % 2 == 0 else mounts[::-1]):
            assert m.pg is not None
            m.tps.append(pgbench(m.pg, True, clients, seconds))
            log(f"  round {r + 1} {m.res.label}: {m.tps[-1]:.0f} tps")
    for m in mounts:
        m.res.select_tps = statistics.median(m.tps)
        m.res.select_reads = fuse_reads(m.data) - before[id(m)]


def download(url: str, dest: Path, endpoint: str, server: S3Server) -> float:
    """Seconds to fetch every object of the catalog (8 threads), as a copy would."""
    import obstore
    from obstore.store import S3Store

    bucket, _, prefix = url[len("s3://"):].partition("/")
    store = S3Store(bucket, prefix=prefix, **server.store_kwargs(endpoint))
    t0 = time.monotonic()
    paths = [m["path"] for batch in obstore.list(store) for m in batch]

    def get(path: str) -> None:
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(bytes(obstore.get(store, path).bytes()))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(get, paths))
    return time.monotonic() - t0


def measure_download_restore(label: str, url: str, backup: Backup, run: Path, endpoint: str,
                             server: S3Server) -> Result:
    res = Result(label)
    make_owned_dir(run, 0o755)
    t0 = time.monotonic()
    res.download_s = download(url, run / "catalog", endpoint, server)
    local = Backup(run / "catalog", backup.instance, backup.backup_id, backup.scale)
    data = run / "data"
    export(local, data)
    prepare_datadir(data)
    pg = PgCluster(data, free_port(), run / "sock")
    try:
        res.first_query_s = first_query(pg, t0)
    finally:
        pg.teardown()
    log(f"  {label}: download {res.download_s:.1f} s, to first query {res.first_query_s:.1f} s")
    return res


def report(args: argparse.Namespace, backup_size: int, results: list[Result],
           scale: int) -> str:
    def f(v: float | int | None, spec: str = ".2f") -> str:
        return "-" if v is None else format(v, spec)

    local = next(r for r in results if r.label == "local disk")
    lines = [
        "# pbkfs mounts from S3 (SeaweedFS on loopback, a proxy adding latency)", "",
        "    .venv/bin/python -m tools.bench_s3 " + " ".join(sys.argv[1:]), "",
        f"Backup: pgbench scale {scale}, FULL zlib `--stream`, {backup_size / 1e6:.0f} MB in "
        f"the catalog, of which {args.wal_size / 1e6:.0f} MB are the WAL inside the backup "
        "(the default layout copies it into the diff at the first mount). "
        f"pgbench select-only `-c {args.clients}`, median of {args.rounds} runs of "
        f"{args.seconds} s, after a prewarm, every mount's runs in turn (all mounts up at "
        "once, the order reversed every other round); first scan = "
        "`SELECT count(*) FROM pgbench_accounts` on a fresh mount. "
        "Machine: 2 CPUs; load average before the run "
        f"{args.load_before:.2f}.", "",
        "| configuration | mount s | to first query s | fetched before first query | "
        "requests | first scan MB/s | select-only tps (vs local disk) | reads reaching pbkfs "
        "during select-only |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        share = (f"{r.fetched / 1e6:.1f} MB ({100 * r.fetched / backup_size:.1f} %)"
                 if r.fetched is not None else "-")
        ratio = (f" ({r.select_tps / local.select_tps:.2f})"
                 if r.select_tps and local.select_tps else "")
        lines.append(f"| {r.label} | {f(r.mount_s)} | {f(r.first_query_s)} | {share} | "
                     f"{f(r.requests, 'd')} | {f(r.scan_mb_s, '.0f')} | "
                     f"{f(r.select_tps, '.0f')}{ratio} | {f(r.select_reads, 'd')} |")
    lines += ["", "Download + restore: `download s` is fetching every object of the catalog "
              "(8 threads); `to first query` adds the restore-like export and the server start."]
    for r in results:
        if r.download_s is not None:
            lines.append(f"* {r.label}: download {r.download_s:.1f} s, to first query "
                         f"{f(r.first_query_s, '.1f')} s")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=20)
    ap.add_argument("--latency-ms", default="0,20")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "tools" / "bench_results" / "s3.md")
    args = ap.parse_args()
    args.load_before = load1()
    latencies = [float(x) for x in args.latency_ms.split(",")]
    results_dl: list[Result] = []
    mounts: list[Mounted] = []
    with pg_workdir("pbkfs-bench-s3-") as work, ExitStack() as stack:
        backup = make_backup(work / "source", args.scale, copy=False)
        size = du(backup.store)
        args.wal_size = du(backup.store / "backups" / backup.instance / backup.backup_id /
                           "database" / "pg_wal")
        server = stack.enter_context(S3Server.start(make_owned_dir(work / "s3", 0o755)))
        server.make_bucket(BUCKET)
        url = f"s3://{BUCKET}/catalog"
        sync_dir(backup.store, url, env=server.env())
        os.environ.update(server.env())
        stack.callback(close_all, mounts)
        mounts.append(measure_mount("local disk", str(backup.store), backup,
                                    work / "local", {}))
        for ms in latencies:
            proxy = stack.enter_context(FaultProxy(server.endpoint))
            proxy.latency = ms / 1000
            conf = make_owned_dir(work / f"conf{ms:g}", 0o755) / "pbkfs.toml"
            conf.write_text(f'[store]\ncache_dir = "{conf.parent / "cache"}"\n'
                            f'endpoint = "{proxy.endpoint}"\n')
            mounts.append(measure_mount(
                f"s3, +{ms:g} ms per request", url, backup, work / f"s3-{ms:g}",
                {"PBKFS_CONFIG": str(conf)}))
            if ms == latencies[-1]:  # without the first mount's copy of pg_wal
                conf2 = make_owned_dir(work / f"conf{ms:g}-walfuse", 0o755) / "pbkfs.toml"
                conf2.write_text(f'[store]\ncache_dir = "{conf2.parent / "cache"}"\n'
                                 f'endpoint = "{proxy.endpoint}"\n')
                mounts.append(measure_mount(
                    f"s3, +{ms:g} ms, --wal-through-mount", url, backup,
                    work / f"s3-{ms:g}-walfuse", {"PBKFS_CONFIG": str(conf2)},
                    ("--wal-through-mount",)))
            results_dl.append(measure_download_restore(
                f"download + restore, +{ms:g} ms", url, backup, work / f"dl-{ms:g}",
                proxy.endpoint, server))
        select_only_rounds(mounts, args.rounds, args.clients, args.seconds)
        results = [m.res for m in mounts] + results_dl
    text = report(args, size, results, args.scale)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
