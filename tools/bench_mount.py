"""pbkfs mount vs a local copy: pgbench TPC-B and select-only, mount time, memory.

    .venv/bin/python -m tools.bench_mount [--scale 20] [--seconds 20] [--clients 1,8,16]
        [--workers 1,2,4] [--local-wal] [--catalog DIR --instance main --backup-id ID]
        [--baseline-tree DIR] [--variant LABEL:NAME=VALUE]... [--out tools/bench_results/mount.md]

In one run on one machine: makes a PostgreSQL 15 cluster with `pgbench -i -s SCALE`, takes
a FULL zlib `--stream` backup with `python -m tools.mkbackup` (unless --catalog is given),
then for the local baseline and for each `--workers N` mount: a fresh data directory
(local: the backup exported as restore writes it; mount: `pbkfs mount` with a fresh diff),
PostgreSQL started on it, pgbench TPC-B (`-N` not used) then select-only (`-S`) at each
client count for SECONDS each (prepared statements, `-j min(c, 2)`), the resident memory of
every pbkfs process, and the time from `pbkfs mount` to the first successful query against
the time to copy the whole data directory. Results go to a Markdown file.

`--baseline-tree DIR` adds, for each `--workers N`, a mount made by the pbkfs of another
checkout (e.g. `git worktree add /tmp/base REV`), in the same run: a change measured side
by side with what it replaces. `--variant LABEL:NAME=VALUE` adds a mount per `--workers N`
started with that environment variable (pbkfs's measurement switches, e.g.
`write-behind:PBKFS_WRITE_BEHIND=1`).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.mounting import force_unmount, mount_pids  # noqa: E402
from tests.support.postgres import (  # noqa: E402
    PgCluster,
    free_port,
    make_owned_dir,
    pg_workdir,
    prepare_datadir,
    running_cluster,
)
from tools.benchreport import cpu_model  # noqa: E402
from tools.benchreport import write_report as write_markdown  # noqa: E402

PY = sys.executable


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def du(path: Path, allocated: bool = False) -> int:
    files = [f for f in path.rglob("*") if f.is_file() and not f.is_symlink()]
    if allocated:
        return sum(f.stat().st_blocks * 512 for f in files)
    return sum(f.stat().st_size for f in files)


def make_backup(work: Path, scale: int) -> tuple[Path, str, str, float, int]:
    """Cluster + pgbench data + FULL backup; returns catalog, instance, id, cp seconds, bytes."""
    store = work / "catalog"
    with running_cluster(work, options={"max_wal_size": "4GB"}) as pg:
        log(f"pgbench -i -s {scale} ...")
        pg.pgbench(["-i", "-s", str(scale), "-q", "postgres"])
        pg.psql("VACUUM ANALYZE; CHECKPOINT;")
        base = [PY, "-m", "tools.mkbackup"]
        subprocess.run([*base, "init", "-B", str(store)], check=True, cwd=REPO)
        subprocess.run([*base, "add-instance", "-B", str(store), "--instance", "main",
                        "-D", str(pg.datadir)], check=True, cwd=REPO)
        log("backup FULL zlib ...")
        out = subprocess.run(
            [*base, "backup", "-B", str(store), "--instance", "main", "--stream", "-j", "2",
             "-b", "FULL", "--compress-algorithm", "zlib", "-q", "-h", str(pg.sockdir),
             "-p", str(pg.port), "-U", "postgres"],
            check=True, cwd=REPO, capture_output=True, text=True,
        )
        backup_id = out.stdout.strip().split()[-1]
        pg.stop()
        # The baseline "copy the whole data directory" time, made durable.
        copy = work / "cp-copy"
        t0 = time.monotonic()
        subprocess.run(["cp", "-a", str(pg.datadir), str(copy)], check=True)
        subprocess.run(["sync", "-f", str(copy)], check=True)
        cp_seconds = time.monotonic() - t0
        size = du(copy)
        shutil.rmtree(copy)
    return store, "main", backup_id, cp_seconds, size


def export(store: Path, instance: str, backup_id: str, dest: Path) -> float:
    from pbkfs.view import open_view
    from pbkfs.view.export import export_tree

    t0 = time.monotonic()
    view = open_view(store, instance, backup_id)
    try:
        export_tree(view, dest)
    finally:
        view.close()
    # in-place tablespace directories need this on a restored copy too
    with open(dest / "postgresql.auto.conf", "a") as f:
        f.write("\nallow_in_place_tablespaces = 'on'\narchive_mode = 'off'\n")
    subprocess.run(["sync", "-f", str(dest)], check=True)
    return time.monotonic() - t0


def first_query(pg: PgCluster, t0: float) -> float:
    pg.start()
    out = pg.psql("SELECT count(*) FROM pgbench_branches")
    assert int(out) > 0
    return time.monotonic() - t0


PREWARM = """
CREATE EXTENSION IF NOT EXISTS pg_prewarm;
SELECT sum(pg_prewarm(c.oid::regclass, 'read')) FROM pg_class c
 WHERE c.relname LIKE 'pgbench%' AND c.relkind IN ('r', 'i');
"""


def prewarm(pg: PgCluster) -> float:
    """Read every pgbench table and index once (into the OS cache, not shared buffers)."""
    t0 = time.monotonic()
    pg.psql(PREWARM)
    return time.monotonic() - t0


def pgbench(pg: PgCluster, select: bool, clients: int, seconds: int) -> float:
    args = ["-n", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2)),
            "-T", str(seconds)]
    if select:
        args.append("-S")
    res = pg.pgbench([*args, "postgres"])
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", res.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", res.stdout)
    if m is None or (failed and int(failed.group(1))):
        raise SystemExit(f"pgbench failed:\n{res.stdout}\n{res.stderr}")
    return float(m.group(1))


def rss(pids: list[int]) -> tuple[int, int]:
    """(sum of VmRSS, sum of VmHWM) in KiB."""
    now = peak = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                now += int(line.split()[1])
            elif line.startswith("VmHWM:"):
                peak += int(line.split()[1])
    return now, peak


class Config:
    """One data directory under test (the local copy or a mount) with its server."""

    def __init__(self, label: str, workers: int | None, local_wal: bool,
                 tree: Path = REPO, env: dict[str, str] | None = None) -> None:
        self.label = label
        self.workers = workers
        self.local_wal = local_wal
        self.tree = tree  # whose pbkfs makes the mount (its processes start in that tree)
        self.env = env or {}  # extra environment of the mount's processes
        self.pg: PgCluster | None = None
        self.data = Path()
        self.diff: Path | None = None


def bring_up(cfg: Config, run: Path, store: Path, instance: str, backup_id: str,
             startup: dict[str, float], commands: list[str]) -> None:
    make_owned_dir(run, 0o755)
    cfg.data = run / "data"
    if cfg.workers is None:
        startup["export (restore) of the backup"] = export(store, instance, backup_id, cfg.data)
        prepare_datadir(cfg.data)
        cfg.pg = PgCluster(cfg.data, free_port(), run / "sock")
        startup["local: start to first query"] = first_query(cfg.pg, time.monotonic())
        startup["local: prewarm"] = prewarm(cfg.pg)
        return
    make_owned_dir(cfg.data, 0o700)
    cfg.diff = run / "diff"
    cmd = [PY, "-m", "pbkfs.cli.main", "mount", "-B", str(store), "--instance", instance,
           "-i", str(backup_id), "-D", str(cfg.data), "-d", str(cfg.diff),
           "--workers", str(cfg.workers)]
    if cfg.local_wal:
        cmd.append("--local-wal")
    commands.append(shlex.join(["pbkfs", *cmd[3:]]))
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=cfg.tree, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **cfg.env})
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{proc.stderr}")
    mounted_at = time.monotonic() - t0
    cfg.pg = PgCluster(cfg.data, free_port(), run / "sock")
    startup[f"{cfg.label}: mount to first query"] = first_query(cfg.pg, t0)
    startup[f"{cfg.label}: mount command alone"] = mounted_at
    startup[f"{cfg.label}: prewarm"] = prewarm(cfg.pg)


def tear_down(cfg: Config, memory: dict[str, tuple[int, int]], diffsize: dict[str, int]) -> None:
    try:
        if cfg.diff is not None:
            memory[cfg.label] = rss(mount_pids(cfg.diff))
        if cfg.pg is not None:
            cfg.pg.teardown()
        if cfg.diff is not None:
            subprocess.run([PY, "-m", "pbkfs.cli.main", "unmount", "-D", str(cfg.data)],
                           cwd=cfg.tree, capture_output=True, timeout=600)
            diffsize[cfg.label] = du(cfg.diff, allocated=True)
    finally:
        if cfg.diff is not None:
            force_unmount(cfg.data, cfg.diff)


def prepare_tree(tree: Path) -> Path:
    """Another checkout, runnable with this venv: its C extension built in place."""
    tree = tree.resolve()
    subprocess.run([PY, "-c", "import setuptools; from setuptools import setup; "
                    "setup(script_args=['build_ext', '--inplace'])"],
                   cwd=tree, check=True, capture_output=True)
    return tree


def tree_revision(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    return out.stdout.strip() or tree.name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scale", type=int, default=20)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--clients", default="1,8,16")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--local-wal", action="store_true",
                    help="also measure each mount with --local-wal")
    ap.add_argument("--catalog", type=Path)
    ap.add_argument("--instance", default="main")
    ap.add_argument("--backup-id")
    ap.add_argument("--baseline-tree", type=Path,
                    help="also mount with the pbkfs of this checkout (same run, side by side)")
    ap.add_argument("--variant", action="append", default=[],
                    help="LABEL:NAME=VALUE: also mount with this environment variable set")
    ap.add_argument("--out", type=Path, default=REPO / "tools" / "bench_results" / "mount.md")
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    results: dict[tuple[str, str, int], float] = {}
    startup: dict[str, float] = {}
    memory: dict[str, tuple[int, int]] = {}
    commands: list[str] = []
    diffsize: dict[str, int] = {}
    with pg_workdir("pbkfs-benchmount-") as work:
        if args.catalog:
            store, instance, backup_id = args.catalog, args.instance, args.backup_id
            cp_seconds, size = float("nan"), 0
        else:
            store, instance, backup_id, cp_seconds, size = make_backup(work, args.scale)
        log(f"backup {backup_id} in {store}")
        configs = [Config("local copy", None, False)]
        base_tree = prepare_tree(args.baseline_tree) if args.baseline_tree else None
        for w in workers:
            configs.append(Config(f"pbkfs --workers {w}", w, False))
            if base_tree is not None:
                rev = tree_revision(base_tree)
                configs.append(Config(f"baseline {rev} --workers {w}", w, False, base_tree))
            for variant in args.variant:
                label, _, assignment = variant.partition(":")
                name, _, value = assignment.partition("=")
                configs.append(Config(f"pbkfs --workers {w} ({label})", w, False,
                                      env={name: value}))
            if args.local_wal:
                configs.append(Config(f"pbkfs --workers {w} --local-wal", w, True))
        try:
            for i, cfg in enumerate(configs):
                log(f"starting {cfg.label}")
                bring_up(cfg, work / f"run-{i}", store, instance, str(backup_id), startup,
                         commands)
            # Every configuration runs the same sequence, interleaved run by run, so a
            # change in the machine's load hits all of them alike.
            for select in (False, True):
                mode = "select-only" if select else "TPC-B"
                for c in clients:
                    for cfg in configs:
                        assert cfg.pg is not None
                        tps = pgbench(cfg.pg, select, c, args.seconds)
                        results[(cfg.label, mode, c)] = tps
                        log(f"  {cfg.label} {mode} -c {c}: {tps:.0f} tps")
        finally:
            for cfg in configs:
                tear_down(cfg, memory, diffsize)
    write_report(args, clients, results, startup, memory, commands, cp_seconds, size, diffsize)


def write_report(args: argparse.Namespace, clients: list[int],
                 results: dict[tuple[str, str, int], float], startup: dict[str, float],
                 memory: dict[str, tuple[int, int]], commands: list[str], cp_seconds: float,
                 size: int, diffsize: dict[str, int]) -> None:
    labels = list(dict.fromkeys(k[0] for k in results))
    lines = [
        "# pbkfs mount vs local copy",
        "",
        f"PostgreSQL 15, `pgbench -i -s {args.scale}` ({size / 1e6:.0f} MB data directory),"
        f" FULL zlib `--stream` backup by `tools.mkbackup`. Each pgbench run: `-M prepared"
        f" -T {args.seconds} -j min(c,2)`, TPC-B then select-only, on a fresh copy / fresh"
        " diff per configuration, default PostgreSQL settings (shared_buffers 128MB), fsync on."
        " All servers run side by side and the runs alternate between configurations (each"
        " configuration gets the same sequence of runs)."
        " Before pgbench, every pgbench table and index is read once with"
        " `pg_prewarm(..., 'read')` (OS cache, not shared buffers) in every configuration, so"
        " the runs compare steady states; the prewarm time is listed below.",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()}, "
        f"kernel {platform.release()}.",
        "",
        "Command:",
        "",
        "    .venv/bin/python -m tools.bench_mount " + " ".join(sys.argv[1:]),
        "",
        "## Transactions per second (ratio to the local copy)",
        "",
    ]
    head = "| configuration | " + " | ".join(
        f"{m} -c {c}" for m in ("TPC-B", "select-only") for c in clients) + " |"
    lines += [head, "| --- |" + " ---: |" * (2 * len(clients))]
    local = "local copy"
    for label in labels:
        cells = []
        for mode in ("TPC-B", "select-only"):
            for c in clients:
                tps = results.get((label, mode, c))
                base = results.get((local, mode, c))
                if tps is None:
                    cells.append("-")
                elif base and label != local:
                    cells.append(f"{tps:.0f} ({tps / base:.2f})")
                else:
                    cells.append(f"{tps:.0f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Time to a usable database", "", "| what | seconds |", "| --- | ---: |"]
    lines.append(f"| cp -a of the whole source data directory + sync | {cp_seconds:.1f} |")
    for k, v in startup.items():
        lines.append(f"| {k} | {v:.2f} |")
    lines += ["", "## Memory of all pbkfs processes (frontend + workers), end of run", "",
              "| configuration | RSS now (MB) | peak RSS (MB) | diff on disk after the run (MB) |",
              "| --- | ---: | ---: | ---: |"]
    for k, (now, peak) in memory.items():
        lines.append(f"| {k} | {now / 1024:.0f} | {peak / 1024:.0f} |"
                     f" {diffsize.get(k, 0) / 1e6:.0f} |")
    lines += ["", "Mount commands run (paths are temporary):", ""]
    lines += [f"    {c}" for c in commands]
    write_markdown(args.out, lines)


if __name__ == "__main__":
    main()
