"""pbkfs mount vs a local copy: the goal table of the performance issue, pgbench, startup, memory.

    .venv/bin/python -m tools.bench_mount [--scale 20] [--seconds 20] [--clients 1,8,16]
        [--workers 1,2,4] [--option "FLAGS"]... [--rounds 2] [--idle-load 1.5]
        [--idle-wait 300] [--startup-scale S]
        [--catalog DIR --instance main --backup-id ID]
        [--baseline-tree DIR] [--variant LABEL:NAME=VALUE]... [--out tools/bench_results/mount.md]

In one run on one machine: makes a PostgreSQL 15 cluster with `pgbench -i -s SCALE`, takes
a FULL zlib `--stream` backup with `python -m tools.mkbackup` (unless --catalog is given),
then brings up, each on a fresh data directory with its own server:

* "local copy": the backup exported as restore writes it (the baseline; the export's
  MB/s is the rate a restore-like copy writes the data);
* "pbkfs (default)": `pbkfs mount` with no --workers and no option (what a user gets);
* "pbkfs --workers N" for each N of --workers;
* the default mount plus the flags of each --option (e.g. `--option=--wal-through-mount`).

On every one, right after PostgreSQL first answers: the time from `pbkfs mount` (or the
server start) to that first query, then the first full scan of the never-read
pgbench_accounts (MB/s of the table), then a prewarm of every pgbench relation. Then the
same interleaved pgbench sequence (TPC-B, then select-only, at each client count, each
configuration in turn) is run --rounds times; a cell is the median over the rounds. Before
the startup measurements and before each round the tool waits (at most --idle-wait seconds)
for the 1-minute load average to fall to --idle-load. `--startup-scale S` also measures the
default mount's startup and first scan on a second cluster at scale S. The resident memory of
every pbkfs process is read at the end. Results go to a Markdown file, goal table first.

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
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.mounting import force_unmount, mount_pids  # noqa: E402
from tests.support.postgres import (  # noqa: E402
    PG_BIN,
    PG_USER,
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
LOCAL = "local copy"
DEFAULT = "pbkfs (default)"
MODES = ("TPC-B", "select-only")
# Bounds of the subprocesses (seconds): nothing the tool starts can hang it.
SHORT = 120
LONG = 3600


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def du(path: Path, allocated: bool = False) -> int:
    files = [f for f in path.rglob("*") if f.is_file() and not f.is_symlink()]
    if allocated:
        return sum(f.stat().st_blocks * 512 for f in files)
    return sum(f.stat().st_size for f in files)


def mb_per_s(size: int, seconds: float | None) -> float | None:
    """A rate in MB/s (10^6 bytes), None when not measured."""
    if seconds is None or seconds <= 0:
        return None
    return size / 1e6 / seconds


# -- what is measured ---------------------------------------------------------------------


@dataclass
class Backup:
    """The catalog and backup under test, and how long a plain copy of its source took."""

    store: Path
    instance: str
    backup_id: str
    scale: int | None
    cp_seconds: float | None = None
    size: int = 0


@dataclass
class Export:
    """The restore-like export of a backup: the rate the scan goal is measured against."""

    seconds: float
    size: int

    @property
    def rate(self) -> float | None:
        return mb_per_s(self.size, self.seconds)


@dataclass
class Startup:
    """One fresh data directory's way to a usable database (seconds; None = not done)."""

    mount: float | None = None  # the `pbkfs mount` command alone
    first_query: float | None = None  # mount command (or server start) to the first answer
    scan: float | None = None  # first full scan of pgbench_accounts
    table_size: int = 0  # pg_relation_size('pgbench_accounts')
    prewarm: float | None = None

    @property
    def scan_rate(self) -> float | None:
        return mb_per_s(self.table_size, self.scan)


@dataclass
class IdleWait:
    """A wait for the machine to be idle, and the load averages of the runs that followed."""

    phase: str
    before: float
    after: float
    waited: float
    reached: bool
    runs: list[float] = field(default_factory=list)


@dataclass
class Config:
    """One data directory under test (the local copy or a mount) with its server."""

    label: str
    local: bool = False
    workers: int | None = None  # None: no --workers flag (the configured default)
    flags: list[str] = field(default_factory=list)
    tree: Path = REPO  # whose pbkfs makes the mount (its processes start in that tree)
    env: dict[str, str] = field(default_factory=dict)  # extra environment of the mount
    pg: PgCluster | None = None
    data: Path = Path()
    diff: Path | None = None
    start: Startup = field(default_factory=Startup)
    export: Export | None = None


@dataclass
class ScaleRun:
    """The default mount's startup on the second (--startup-scale) cluster."""

    scale: int
    export: Export | None = None
    start: Startup = field(default_factory=Startup)
    error: str | None = None


@dataclass
class Run:
    """Everything one invocation measured: what the report is written from."""

    args: argparse.Namespace
    clients: list[int]
    backup: Backup
    configs: list[Config] = field(default_factory=list)
    results: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)
    waits: list[IdleWait] = field(default_factory=list)
    memory: dict[str, tuple[int, int]] = field(default_factory=dict)
    diffsize: dict[str, int] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    second: ScaleRun | None = None

    def config(self, label: str) -> Config | None:
        return next((c for c in self.configs if c.label == label), None)

    def tps(self, label: str, mode: str, clients: int) -> float | None:
        """Median tps over the rounds."""
        values = self.results.get((label, mode, clients))
        return statistics.median(values) if values else None

    def ratio(self, label: str, mode: str, clients: int) -> float | None:
        """Median tps of `label` over the median of the local copy."""
        tps, base = self.tps(label, mode, clients), self.tps(LOCAL, mode, clients)
        return tps / base if tps is not None and base else None


# -- the machine ----------------------------------------------------------------------------


def load1() -> float:
    return os.getloadavg()[0]


def wait_idle(phase: str, limit: float, max_wait: float) -> IdleWait:
    """Wait for the 1-minute load average to fall to `limit`: a busy machine skews every number.

    Gives up after `max_wait` seconds (the report says so) rather than never measuring.
    """
    t0 = time.monotonic()
    before = now = load1()
    next_note = t0
    while now > limit and time.monotonic() - t0 < max_wait:
        if time.monotonic() >= next_note:
            log(f"{phase}: load average {now:.2f} > {limit}, waiting (at most {max_wait:.0f} s)")
            next_note += 30
        time.sleep(min(5.0, max(0.1, max_wait - (time.monotonic() - t0))))
        now = load1()
    waited = time.monotonic() - t0
    reached = now <= limit
    if not reached:
        log(f"{phase}: load average still {now:.2f} after {waited:.0f} s; measuring anyway")
    return IdleWait(phase, before, now, waited, reached)


# -- clusters, backups, servers -------------------------------------------------------------


def mkbackup(*args: str, timeout: float = SHORT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "tools.mkbackup", *args], check=True, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def copy_seconds(datadir: Path, dest: Path) -> tuple[float, int]:
    """The "copy the whole data directory" time (made durable) and its size."""
    t0 = time.monotonic()
    subprocess.run(["cp", "-a", str(datadir), str(dest)], check=True, timeout=LONG)
    subprocess.run(["sync", "-f", str(dest)], check=True, timeout=LONG)
    seconds = time.monotonic() - t0
    size = du(dest)
    shutil.rmtree(dest)
    return seconds, size


def make_backup(work: Path, scale: int, copy: bool = True) -> Backup:
    """Cluster + pgbench data + FULL zlib backup (and, with `copy`, the cp -a reference)."""
    make_owned_dir(work, 0o755)
    store = work / "catalog"
    with running_cluster(work, options={"max_wal_size": "4GB"}) as pg:
        log(f"pgbench -i -s {scale} ...")
        pg.run([PG_BIN / "pgbench", "-h", pg.sockdir, "-p", str(pg.port), "-U", PG_USER,
                "-i", "-s", str(scale), "-q", "postgres"], timeout=LONG)
        pg.psql("VACUUM ANALYZE; CHECKPOINT;")
        mkbackup("init", "-B", str(store))
        mkbackup("add-instance", "-B", str(store), "--instance", "main", "-D", str(pg.datadir))
        log("backup FULL zlib ...")
        out = mkbackup("backup", "-B", str(store), "--instance", "main", "--stream", "-j", "2",
                       "-b", "FULL", "--compress-algorithm", "zlib", "-q", "-h", str(pg.sockdir),
                       "-p", str(pg.port), "-U", "postgres", timeout=LONG)
        backup = Backup(store, "main", out.stdout.strip().split()[-1], scale)
        pg.stop()
        if copy:
            backup.cp_seconds, backup.size = copy_seconds(pg.datadir, work / "cp-copy")
    return backup


def export(backup: Backup, dest: Path) -> Export:
    """The backup written out as restore would (timed, synced): the local baseline."""
    from pbkfs.view import open_view
    from pbkfs.view.export import export_tree

    t0 = time.monotonic()
    view = open_view(backup.store, backup.instance, backup.backup_id)
    try:
        export_tree(view, dest)
    finally:
        view.close()
    # in-place tablespace directories need this on a restored copy too
    with open(dest / "postgresql.auto.conf", "a") as f:
        f.write("\nallow_in_place_tablespaces = 'on'\narchive_mode = 'off'\n")
    subprocess.run(["sync", "-f", str(dest)], check=True, timeout=LONG)
    return Export(time.monotonic() - t0, du(dest))


def first_query(pg: PgCluster, t0: float) -> float:
    pg.start()
    out = pg.psql("SELECT count(*) FROM pgbench_branches")
    assert int(out) > 0
    return time.monotonic() - t0


def first_scan(pg: PgCluster) -> tuple[float, int]:
    """Seconds of the first full scan of pgbench_accounts, and the table's size in bytes.

    Run before anything else reads the table: on a fresh mount every page is decompressed
    from the backup on the way, the cost a user meets with the first big query.
    """
    with psycopg.connect(**pg.conninfo(), autocommit=True, connect_timeout=30) as conn:
        conn.execute(f"SET statement_timeout = '{LONG}s'")
        row = conn.execute("SELECT pg_relation_size('pgbench_accounts')").fetchone()
        assert row is not None
        t0 = time.monotonic()
        conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone()
        return time.monotonic() - t0, int(row[0])


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
    res = pg.run([PG_BIN / "pgbench", "-h", pg.sockdir, "-p", str(pg.port), "-U", PG_USER,
                  *args, "postgres"], timeout=seconds + 300)
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", res.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", res.stdout)
    if m is None or (failed and int(failed.group(1))):
        raise SystemExit(f"pgbench failed:\n{res.stdout}\n{res.stderr}")
    return float(m.group(1))


def _proc_sums(pids: list[int], name: str, keys: tuple[str, ...]) -> list[int]:
    """Per key ("VmRSS:" ...), the sum over `pids` of /proc/<pid>/<name>'s value in KiB."""
    sums = [0] * len(keys)
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/{name}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            for i, key in enumerate(keys):
                if line.startswith(key):
                    sums[i] += int(line.split()[1])
    return sums


def pss(pids: list[int]) -> int:
    """Sum of proportional set sizes in KiB: pages shared with other processes (the
    interpreter, libraries: every mount's processes run the same ones) counted in
    shares, so the sum over all mounts is what they take together."""
    return _proc_sums(pids, "smaps_rollup", ("Pss:",))[0]


def rss(pids: list[int]) -> tuple[int, int]:
    """(sum of VmRSS, sum of VmHWM) in KiB."""
    now, peak = _proc_sums(pids, "status", ("VmRSS:", "VmHWM:"))
    return now, peak


def mount_command(cfg: Config, backup: Backup) -> list[str]:
    """`pbkfs mount` as a user types it: --workers only when the configuration names it."""
    assert cfg.diff is not None
    cmd = [PY, "-m", "pbkfs.cli.entry", "mount", "-B", str(backup.store), "--instance",
           backup.instance, "-i", backup.backup_id, "-D", str(cfg.data), "-d", str(cfg.diff)]
    if cfg.workers is not None:
        cmd += ["--workers", str(cfg.workers)]
    return cmd + cfg.flags


def bring_up_local(cfg: Config, run: Path, backup: Backup) -> None:
    """Export, start, first query, first scan: the baseline's own startup."""
    cfg.export = export(backup, cfg.data)
    prepare_datadir(cfg.data)
    cfg.pg = PgCluster(cfg.data, free_port(), run / "sock")
    cfg.start.first_query = first_query(cfg.pg, time.monotonic())


def bring_up_mount(cfg: Config, run: Path, backup: Backup, commands: list[str]) -> None:
    """`pbkfs mount` on a fresh diff, then the server: timed from the mount command on."""
    make_owned_dir(cfg.data, 0o700)
    cfg.diff = run / "diff"
    cmd = mount_command(cfg, backup)
    commands.append(shlex.join(["pbkfs", *cmd[3:]]))
    log(f"  load {load1():.2f}: {shlex.join(['pbkfs', *cmd[3:]])}")
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=cfg.tree, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **cfg.env})
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{proc.stderr}")
    cfg.start.mount = time.monotonic() - t0
    cfg.pg = PgCluster(cfg.data, free_port(), run / "sock")
    cfg.start.first_query = first_query(cfg.pg, t0)


def bring_up(cfg: Config, run: Path, backup: Backup, commands: list[str],
             warm: bool = True) -> None:
    """A fresh data directory and its server, with the startup measurements in order."""
    make_owned_dir(run, 0o755)
    cfg.data = run / "data"
    if cfg.local:
        bring_up_local(cfg, run, backup)
    else:
        bring_up_mount(cfg, run, backup, commands)
    assert cfg.pg is not None
    cfg.start.scan, cfg.start.table_size = first_scan(cfg.pg)
    log(f"  {cfg.label}: first query {cfg.start.first_query:.2f} s, first scan"
        f" {cfg.start.scan:.2f} s ({cfg.start.scan_rate or 0:.0f} MB/s)")
    if warm:
        cfg.start.prewarm = prewarm(cfg.pg)


def tear_down(cfg: Config, memory: dict[str, tuple[int, int]], diffsize: dict[str, int]) -> None:
    try:
        if cfg.diff is not None:
            memory[cfg.label] = rss(mount_pids(cfg.diff))
        if cfg.pg is not None:
            cfg.pg.teardown()
        if cfg.diff is not None:
            subprocess.run([PY, "-m", "pbkfs.cli.entry", "unmount", "-D", str(cfg.data)],
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
                   cwd=tree, check=True, capture_output=True, timeout=600)
    return tree


def tree_revision(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, timeout=30)
    return out.stdout.strip() or tree.name


# -- the run ----------------------------------------------------------------------------------


def make_configs(args: argparse.Namespace, workers: list[int]) -> list[Config]:
    """Local copy, default mount, one per --workers N (+ baseline, variants), one per --option."""
    configs = [Config(LOCAL, local=True), Config(DEFAULT)]
    base_tree = prepare_tree(args.baseline_tree) if args.baseline_tree else None
    for w in workers:
        configs.append(Config(f"pbkfs --workers {w}", workers=w))
        if base_tree is not None:
            rev = tree_revision(base_tree)
            configs.append(Config(f"baseline {rev} --workers {w}", workers=w, tree=base_tree))
        for variant in args.variant:
            label, _, assignment = variant.partition(":")
            name, _, value = assignment.partition("=")
            configs.append(Config(f"pbkfs --workers {w} ({label})", workers=w,
                                  env={name: value}))
    for option in args.option:
        configs.append(Config(f"pbkfs {option}", flags=shlex.split(option)))
    return configs


def run_round(run: Run, number: int) -> None:
    """The whole interleaved sequence once: a load change hits every configuration alike."""
    args = run.args
    wait = wait_idle(f"round {number}", args.idle_load, args.idle_wait)
    run.waits.append(wait)
    for select in (False, True):
        mode = MODES[select]
        for c in run.clients:
            for cfg in run.configs:
                assert cfg.pg is not None
                load = load1()
                wait.runs.append(load)
                log(f"  round {number}, load {load:.2f}: {cfg.label} {mode} -c {c} ...")
                # every run starts right after a checkpoint: the same full-page writes in
                # each, and no checkpoint (of this server) falling into some runs only
                cfg.pg.psql("CHECKPOINT")
                tps = pgbench(cfg.pg, select, c, args.seconds)
                run.results.setdefault((cfg.label, mode, c), []).append(tps)
                log(f"    {tps:.0f} tps")


def measure_main(run: Run, work: Path) -> None:
    """Bring every configuration up (startup measurements), run the rounds, tear down."""
    args = run.args
    try:
        run.waits.append(wait_idle("startup (mounts, first queries, first scans)",
                                   args.idle_load, args.idle_wait))
        for i, cfg in enumerate(run.configs):
            log(f"starting {cfg.label}")
            bring_up(cfg, work / f"run-{i}", run.backup, run.commands)
        for number in range(1, args.rounds + 1):
            run_round(run, number)
    finally:
        for cfg in run.configs:
            tear_down(cfg, run.memory, run.diffsize)


def measure_second_scale(run: Run, work: Path, scale: int) -> ScaleRun:
    """The default mount's startup and first scan on a bigger cluster (and its export rate)."""
    out = ScaleRun(scale)
    backup = make_backup(work, scale, copy=False)
    run.waits.append(wait_idle(f"scale {scale} startup", run.args.idle_load,
                               run.args.idle_wait))
    dest = work / "export"
    out.export = export(backup, dest)
    shutil.rmtree(dest)
    cfg = Config(DEFAULT)
    try:
        log(f"starting {cfg.label} at scale {scale}")
        bring_up(cfg, work / "mount", backup, run.commands, warm=False)
    finally:
        tear_down(cfg, {}, {})
    out.start = cfg.start
    return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scale", type=int, default=20)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--clients", default="1,8,16")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--option", action="append", default=[],
                    help='"FLAGS": also the default mount with these pbkfs mount flags')
    ap.add_argument("--rounds", type=int, default=2,
                    help="run the interleaved pgbench sequence this many times (medians)")
    ap.add_argument("--idle-load", type=float, default=1.5,
                    help="wait for the 1-minute load average to fall to this")
    ap.add_argument("--idle-wait", type=float, default=300,
                    help="... but at most this many seconds each time")
    ap.add_argument("--startup-scale", type=int,
                    help="also measure the default mount's startup on a cluster of this scale")
    ap.add_argument("--catalog", type=Path)
    ap.add_argument("--instance", default="main")
    ap.add_argument("--backup-id")
    ap.add_argument("--baseline-tree", type=Path,
                    help="also mount with the pbkfs of this checkout (same run, side by side)")
    ap.add_argument("--variant", action="append", default=[],
                    help="LABEL:NAME=VALUE: also mount with this environment variable set")
    ap.add_argument("--out", type=Path, default=REPO / "tools" / "bench_results" / "mount.md")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.catalog and not args.backup_id:
        ap.error("--catalog needs --backup-id")
    return args


def main() -> None:
    args = parse_args()
    clients = [int(c) for c in dict.fromkeys(args.clients.split(","))]
    workers = [int(w) for w in dict.fromkeys(args.workers.split(","))]
    with pg_workdir("pbkfs-benchmount-") as work:
        if args.catalog:
            backup = Backup(args.catalog, args.instance, str(args.backup_id), None)
        else:
            backup = make_backup(work / "main", args.scale)
        log(f"backup {backup.backup_id} in {backup.store}")
        run = Run(args, clients, backup, configs=make_configs(args, workers))
        measure_main(run, work)
        if args.startup_scale:
            second = work / f"scale-{args.startup_scale}"
            try:
                run.second = measure_second_scale(run, second, args.startup_scale)
            except (Exception, SystemExit) as e:  # the main run's numbers are still worth a report
                log(f"scale {args.startup_scale}: {e}")
                run.second = ScaleRun(args.startup_scale, error=str(e).splitlines()[0])
    write_markdown(args.out, report(run))


# -- the report -------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".2f", unit: str = "") -> str:
    return "not measured" if value is None else f"{value:{spec}}{unit}"


def verdict(checks: list[bool | None]) -> str:
    """yes / no over the measured parts; says so when a part was not measured."""
    measured = [c for c in checks if c is not None]
    if not measured:
        return "not measured"
    if not all(measured):
        return "no"
    return "yes" if len(measured) == len(checks) else "yes where measured (not all measured)"


def at_least(value: float | None, goal: float) -> bool | None:
    return None if value is None else value >= goal


def at_most(value: float | None, goal: float) -> bool | None:
    return None if value is None else value <= goal


def scale_name(run: Run) -> str:
    return f"scale {run.backup.scale}" if run.backup.scale is not None else "the --catalog backup"


def tps_goal(run: Run, mode: str, clients: list[int], goal: float) -> tuple[str, str]:
    """The default mount's median tps ratio to the local copy at these client counts."""
    parts, checks = [], []
    for c in clients:
        r = run.ratio(DEFAULT, mode, c)
        checks.append(at_least(r, goal))
        if r is None:
            parts.append(f"-c {c}: not measured")
        else:
            parts.append(f"-c {c}: {r:.2f} ({run.tps(DEFAULT, mode, c):.0f} vs"
                         f" {run.tps(LOCAL, mode, c):.0f} tps)")
    return "; ".join(parts), verdict(checks)


def workers_goal(run: Run) -> tuple[str, str]:
    w4, w1 = (run.tps(f"pbkfs --workers {w}", "TPC-B", 16) for w in (4, 1))
    if w4 is None or w1 is None:
        return "not measured (needs --workers 1,4 and -c 16)", "not measured"
    return f"{w4 / w1:.2f}× ({w4:.0f} vs {w1:.0f} tps)", verdict([w4 / w1 >= 1.0])


def startup_goal(run: Run, value: Callable[[Startup, Export | None], tuple[str, bool | None]]
                 ) -> tuple[str, str]:
    """One startup measure of the default mount, at the main scale and at --startup-scale."""
    parts, checks = [], []
    default = run.config(DEFAULT)
    local = run.config(LOCAL)
    if default is not None:
        text, ok = value(default.start, local.export if local else None)
        parts.append(f"{scale_name(run)}: {text}")
        checks.append(ok)
    second = run.second
    if second is None:
        parts.append("second scale: not measured (no --startup-scale)")
        checks.append(None)
    elif second.error is not None:
        parts.append(f"scale {second.scale}: failed ({second.error})")
        checks.append(None)
    else:
        text, ok = value(second.start, second.export)
        parts.append(f"scale {second.scale}: {text}")
        checks.append(ok)
    return "; ".join(parts), verdict(checks)


def mount_seconds(start: Startup, _: Export | None) -> tuple[str, bool | None]:
    return fmt(start.mount, ".2f", " s"), at_most(start.mount, 0.3)


def first_query_seconds(start: Startup, _: Export | None) -> tuple[str, bool | None]:
    return fmt(start.first_query, ".2f", " s"), at_most(start.first_query, 1.0)


def scan_vs_export(start: Startup, exp: Export | None) -> tuple[str, bool | None]:
    rate, base = start.scan_rate, exp.rate if exp else None
    if rate is None or base is None:
        return f"{fmt(rate, '.0f', ' MB/s')} (export rate not measured)", None
    return (f"{rate:.0f} MB/s = {rate / base:.2f}× the export's {base:.0f} MB/s",
            at_least(rate / base, 2.0))


def rss_goal(run: Run) -> tuple[str, str]:
    mem = run.memory.get("pbkfs --workers 2")
    if mem is None:
        return "not measured (no --workers 2 configuration)", "not measured"
    mb = mem[0] / 1024
    return f"{mb:.0f} MB (peak {mem[1] / 1024:.0f} MB)", verdict([mb <= 120])


def goal_lines(run: Run) -> list[str]:
    rows = [
        ("TPC-B `-c 8`, default mount (ratio to local copy)", "≥ 0.95",
         tps_goal(run, "TPC-B", [8], 0.95)),
        ("TPC-B `-c 16`, default mount", "≥ 0.9", tps_goal(run, "TPC-B", [16], 0.9)),
        ("select-only `-c 1/8/16`, default mount", "≥ 1.0",
         tps_goal(run, "select-only", [1, 8, 16], 1.0)),
        ("`--workers 4` vs `--workers 1`, TPC-B `-c 16`", "≥ 1.0×", workers_goal(run)),
        ("`pbkfs mount` command (seconds)", "≤ 0.3 s", startup_goal(run, mount_seconds)),
        ("mount to first query, scale 20 and scale 100", "≤ 1.0 s at both",
         startup_goal(run, first_query_seconds)),
        ("first full scan of a never-read table (zlib backup, MB/s of table)",
         "≥ 2× the rate the restore-like export writes it", startup_goal(run, scan_vs_export)),
        ("RSS of all pbkfs processes after the run, `--workers 2`", "≤ 120 MB", rss_goal(run)),
    ]
    lines = ["## Goals (default mount unless named)", "",
             "| measure | goal | measured | met |", "| --- | --- | --- | --- |"]
    lines += [f"| {m} | {g} | {v} | {ok} |" for m, g, (v, ok) in rows]
    lines += ["", f"pgbench values: median over {run.args.rounds} round(s), ratio of the"
              " medians. Mount command, first query and first scan: one sample each (one"
              " fresh mount per configuration and scale).", ""]
    return lines


def header_lines(run: Run) -> list[str]:
    args, backup = run.args, run.backup
    source = (f"`pgbench -i -s {backup.scale}` ({backup.size / 1e6:.0f} MB data directory),"
              " FULL zlib `--stream` backup by `tools.mkbackup`" if backup.scale is not None
              else f"backup {backup.backup_id} of {backup.store} (--catalog)")
    return [
        "# pbkfs mount vs local copy",
        "",
        f"PostgreSQL 15, {source}. Each pgbench run: `-M prepared -T {args.seconds}"
        " -j min(c,2)`, TPC-B then select-only, on a fresh copy / fresh diff per configuration,"
        " default PostgreSQL settings (shared_buffers 128MB), fsync on. All servers run side by"
        " side and the runs alternate between configurations; the whole sequence is run"
        f" {args.rounds} time(s) and each cell is the median. Before the startup measurements"
        " and before each round the tool waits for the 1-minute load average to fall to"
        f" {args.idle_load} (at most {args.idle_wait:.0f} s). On each fresh data directory,"
        " right after the first query: the first full scan of pgbench_accounts (before anything"
        " else reads it; the backup's files may still be in the OS cache from making it), then"
        " every pgbench table and index is read once with `pg_prewarm(..., 'read')`, so the"
        " pgbench runs compare steady states. Each run starts right after a `CHECKPOINT` of"
        " its server (each run then has the same full-page writes, and none a checkpoint"
        " that others miss).",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()},"
        f" kernel {platform.release()}. Date: {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}.",
        "",
        "Command:",
        "",
        "    .venv/bin/python -m tools.bench_mount " + shlex.join(sys.argv[1:]),
        "",
    ]


def tps_head(clients: list[int]) -> list[str]:
    head = "| configuration | " + " | ".join(
        f"{m} -c {c}" for m in MODES for c in clients) + " |"
    return [head, "| --- |" + " ---: |" * (2 * len(clients))]


def tps_lines(run: Run) -> list[str]:
    lines = ["## Transactions per second, median over the rounds (ratio to the local copy)", ""]
    lines += tps_head(run.clients)
    for cfg in run.configs:
        cells = []
        for mode in MODES:
            for c in run.clients:
                tps, r = run.tps(cfg.label, mode, c), run.ratio(cfg.label, mode, c)
                if tps is None:
                    cells.append("-")
                elif r is not None and cfg.label != LOCAL:
                    cells.append(f"{tps:.0f} ({r:.2f})")
                else:
                    cells.append(f"{tps:.0f}")
        lines.append(f"| {cfg.label} | " + " | ".join(cells) + " |")
    lines += ["", "Per round (round 1 / round 2 / ...):", ""]
    lines += tps_head(run.clients)
    for cfg in run.configs:
        cells = [" / ".join(f"{t:.0f}" for t in run.results.get((cfg.label, mode, c), []))
                 or "-" for mode in MODES for c in run.clients]
        lines.append(f"| {cfg.label} | " + " | ".join(cells) + " |")
    return lines + [""]


def load_lines(run: Run) -> list[str]:
    lines = ["## Load average (1 minute)", "",
             "| phase | at the start of the wait | when measuring began | waited (s) | idle |"
             " before each pgbench run |", "| --- | ---: | ---: | ---: | --- | --- |"]
    for w in run.waits:
        idle = "yes" if w.reached else f"no: still above {run.args.idle_load}, measured anyway"
        runs = " ".join(f"{x:.2f}" for x in w.runs) or "-"
        lines.append(f"| {w.phase} | {w.before:.2f} | {w.after:.2f} | {w.waited:.0f} | {idle} |"
                     f" {runs} |")
    return lines + [""]


def startup_rows(label: str, start: Startup) -> list[str]:
    first = "start to first query" if label == "local" else "mount to first query"
    rows = [(f"{label}: pbkfs mount command alone", start.mount),
            (f"{label}: {first}", start.first_query),
            (f"{label}: first full scan of pgbench_accounts", start.scan),
            (f"{label}: prewarm", start.prewarm)]
    return [f"| {k} | {v:.2f} |" for k, v in rows if v is not None]


def startup_lines(run: Run) -> list[str]:
    lines = ["## Time to a usable database", "", "| what | seconds |", "| --- | ---: |",
             "| cp -a of the whole source data directory + sync |"
             f" {fmt(run.backup.cp_seconds, '.1f')} |"]
    for cfg in run.configs:
        if cfg.export is not None:
            lines.append(f"| export (restore) of the backup | {cfg.export.seconds:.2f} |")
        lines += startup_rows("local" if cfg.local else cfg.label, cfg.start)
    second = run.second
    if second is not None and second.error is None:
        if second.export is not None:
            lines.append(f"| scale {second.scale}: export (restore) of the backup |"
                         f" {second.export.seconds:.2f} |")
        lines += startup_rows(f"scale {second.scale}, {DEFAULT}", second.start)
    return lines + [""]


def scan_row(label: str, start: Startup, exp: Export | None) -> str:
    rate, base = start.scan_rate, exp.rate if exp else None
    ratio = f"{rate / base:.2f}" if rate is not None and base else "-"
    return (f"| {label} | {start.table_size / 1e6:.0f} | {fmt(start.scan)} |"
            f" {fmt(rate, '.0f')} | {ratio} |")


def scan_lines(run: Run) -> list[str]:
    """First full scan rate of every configuration against the export (restore-like) rate."""
    local = run.config(LOCAL)
    exp = local.export if local else None
    lines = ["## First full scan of pgbench_accounts (never read before on that data directory)",
             ""]
    if exp is not None:
        lines += [f"Export (restore-like) of the backup: {exp.size / 1e6:.0f} MB in"
                  f" {exp.seconds:.2f} s = {fmt(exp.rate, '.0f')} MB/s.", ""]
    lines += ["| configuration | table (MB) | seconds | MB/s | ratio to the export rate |",
              "| --- | ---: | ---: | ---: | ---: |"]
    lines += [scan_row(cfg.label, cfg.start, exp) for cfg in run.configs]
    second = run.second
    if second is not None and second.error is None:
        lines.append(scan_row(f"scale {second.scale}: {DEFAULT}", second.start, second.export))
        if second.export is not None:
            lines += ["", f"Scale {second.scale} export: {second.export.size / 1e6:.0f} MB in"
                      f" {second.export.seconds:.2f} s = {fmt(second.export.rate, '.0f')} MB/s."]
    return lines + [""]


def memory_lines(run: Run) -> list[str]:
    lines = ["## Memory of all pbkfs processes (frontend + workers), end of run", "",
             "| configuration | RSS now (MB) | peak RSS (MB) | diff on disk after the run (MB) |",
             "| --- | ---: | ---: | ---: |"]
    for k, (now, peak) in run.memory.items():
        lines.append(f"| {k} | {now / 1024:.0f} | {peak / 1024:.0f} |"
                     f" {run.diffsize.get(k, 0) / 1e6:.0f} |")
    return lines + [""]


def report(run: Run) -> list[str]:
    lines = header_lines(run) + goal_lines(run) + tps_lines(run) + load_lines(run)
    lines += startup_lines(run) + scan_lines(run) + memory_lines(run)
    lines += ["Mount commands run (paths are temporary):", ""]
    return lines + [f"    {c}" for c in run.commands]


if __name__ == "__main__":
    main()
