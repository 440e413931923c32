"""Many mounts of one backup, reset, and restore drills: what they cost on this machine.

    .venv/bin/python -m tools.bench_clones [--scale 20] [--mounts 20] [--workers 1]
        [--out tools/bench_results/clones.md] [--parts mounts,reset,drill]
        [--rounds 1] [--amcheck-jobs 2]

In one run: a PostgreSQL 15 cluster with `pgbench -i -s SCALE`, a FULL zlib `--stream`
backup by `tools.mkbackup`, then:

* **Mounts that fit**: mounts of that backup are added one at a time, each with its own diff
  and its own PostgreSQL (shared_buffers 16MB), until --mounts; after each, every server
  answers `SELECT count(*) FROM pgbench_branches` and the slowest answer is recorded. The
  resident memory of each mount's pbkfs processes is read idle (after the servers started)
  and busy (during a pgbench select-only burst on every server at once).
* **Branch and reset**: a diff grown by pgbench to several sizes; at each, `pbkfs mount
  --from` it timed (and to the branch's first query), then `pbkfs reset` timed.
* **Drill vs restore**: `pbkfs drill` of the backup against the same steps done by hand on a
  restore-like export (export, start, the drill's own pg_amcheck --all --heapallindexed
  with the same --jobs, stop), alternated for --rounds rounds per job count; medians and
  the phases of each.
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.mounting import force_unmount, mount_pids  # noqa: E402
from tests.support.postgres import (  # noqa: E402
    PG_BIN,
    PgCluster,
    free_port,
    make_owned_dir,
    pg_workdir,
    prepare_datadir,
)
from tools.bench_mount import (  # noqa: E402
    Backup,
    du,
    export,
    load1,
    log,
    make_backup,
    pss,
    rss,
)

PY = sys.executable
SMALL_SERVER = {"shared_buffers": "16MB", "max_connections": "20"}


def pbkfs(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([PY, "-m", "pbkfs.cli.entry", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"pbkfs {shlex.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


class Clone:
    def __init__(self, work: Path, n: int, backup: Backup, workers: int) -> None:
        self.run = make_owned_dir(work / f"clone{n}", 0o755)
        self.data = make_owned_dir(self.run / "data", 0o700)
        self.diff = self.run / "diff"
        pbkfs("mount", "-B", str(backup.store), "--instance", backup.instance, "-i",
              backup.backup_id, "-D", str(self.data), "-d", str(self.diff), "--workers",
              str(workers))
        self.pg = PgCluster(self.data, free_port(), self.run / "sock")
        self.pg.start(SMALL_SERVER)

    def answer_seconds(self) -> float:
        t0 = time.monotonic()
        self.pg.psql("SELECT count(*) FROM pgbench_branches")
        return time.monotonic() - t0

    def memory_kib(self) -> tuple[int, int]:
        """(RSS, PSS) of this mount's pbkfs processes."""
        pids = mount_pids(self.diff)
        return rss(pids)[0], pss(pids)

    def close(self) -> None:
        try:
            self.pg.teardown()
            subprocess.run([PY, "-m", "pbkfs.cli.entry", "unmount", "-D", str(self.data)],
                           capture_output=True, timeout=600, cwd=REPO)
        finally:
            force_unmount(self.data, self.diff)


def many_mounts(work: Path, backup: Backup, limit: int, workers: int) -> list[str]:
    clones: list[Clone] = []
    lines = ["| mounts | slowest answer of all servers (s) | pbkfs RSS per mount, idle (MB) "
             "| pbkfs PSS per mount, idle (MB) |", "| ---: | ---: | ---: | ---: |"]
    busy_line = ""
    try:
        for n in range(1, limit + 1):
            clones.append(Clone(work, n, backup, workers))
            slowest = max(c.answer_seconds() for c in clones)
            mem = [c.memory_kib() for c in clones]
            idle = sum(m[0] for m in mem) / len(clones) / 1024
            idle_pss = sum(m[1] for m in mem) / len(clones) / 1024
            log(f"  {n} mounts: slowest answer {slowest:.3f} s, idle RSS {idle:.0f} MB/mount, "
                f"PSS {idle_pss:.0f} MB/mount")
            lines.append(f"| {n} | {slowest:.3f} | {idle:.0f} | {idle_pss:.0f} |")
        procs = [subprocess.Popen(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "pgbench"), "-n", "-S", "-T", "10",
             "-h", str(c.pg.sockdir), "-p", str(c.pg.port), "-U", "postgres", "postgres"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/tmp") for c in clones]
        time.sleep(7)
        busy_mem = [c.memory_kib() for c in clones]
        busy = sum(m[0] for m in busy_mem) / len(clones) / 1024
        busy_pss = sum(m[1] for m in busy_mem) / len(clones) / 1024
        for p in procs:
            p.wait(timeout=120)
        busy_line = (f"Per mount while pgbench select-only runs on all {len(clones)} at "
                     f"once: RSS {busy:.0f} MB, PSS {busy_pss:.0f} MB.")
    finally:
        for c in clones:
            c.close()
    return [*lines, "", busy_line]


def branch_seconds(work: Path, parent: Path) -> tuple[float, float]:
    """`pbkfs mount --from parent` (s), then to the branch's first query (s); removed after."""
    run = make_owned_dir(work / "branch", 0o755)
    data = make_owned_dir(run / "data", 0o700)
    diff = run / "diff"
    t0 = time.monotonic()
    pbkfs("mount", "-D", str(data), "-d", str(diff), "--from", str(parent))
    mounted = time.monotonic() - t0
    pg = PgCluster(data, free_port(), run / "sock")
    try:
        pg.start(SMALL_SERVER)
        pg.psql("SELECT count(*) FROM pgbench_branches")
        first_query = time.monotonic() - t0
    finally:
        pg.teardown()
        subprocess.run([PY, "-m", "pbkfs.cli.entry", "unmount", "-D", str(data)],
                       capture_output=True, timeout=600, cwd=REPO)
        force_unmount(data, diff)
    pbkfs("cleanup", "-d", str(diff))
    return mounted, first_query


def reset_times(work: Path, backup: Backup) -> list[str]:
    lines = ["| diff size (MB) | `pbkfs mount --from` it (s) | branch to first query (s) "
             "| `pbkfs reset` (s) |", "| ---: | ---: | ---: | ---: |"]
    clone = Clone(work, 0, backup, 2)
    try:
        for seconds in (0, 5, 20):
            if seconds:
                clone.pg.run([PG_BIN / "pgbench", "-n", "-T", str(seconds), "-c", "4", "-h",
                              clone.pg.sockdir, "-p", str(clone.pg.port), "-U", "postgres",
                              "postgres"], timeout=seconds + 300)
            clone.pg.stop()
            pbkfs("unmount", "-D", str(clone.data))
            size = du(clone.diff)
            branched, answered = branch_seconds(work, clone.diff)
            t0 = time.monotonic()
            pbkfs("reset", "-d", str(clone.diff))
            took = time.monotonic() - t0
            lines.append(f"| {size / 1e6:.0f} | {branched:.3f} | {answered:.2f} | {took:.3f} |")
            log(f"  a {size / 1e6:.0f} MB diff: branch {branched:.3f} s (first query "
                f"{answered:.2f} s), reset {took:.3f} s")
            pbkfs("mount", "-B", str(backup.store), "--instance", backup.instance, "-i",
                  backup.backup_id, "-D", str(clone.data), "-d", str(clone.diff))
            clone.pg.start(SMALL_SERVER)
    finally:
        clone.close()
    return lines


def drill_once(backup: Backup, jobs: int) -> tuple[float, dict[str, float]]:
    """Seconds of one `pbkfs drill`, and the seconds of each of its phases."""
    t0 = time.monotonic()
    proc = pbkfs("drill", "-B", str(backup.store), "--instance", backup.instance, "-i",
                 backup.backup_id, "--jobs", str(jobs), "--format", "json", timeout=3600)
    seconds = time.monotonic() - t0
    report = json.loads(proc.stdout)
    return seconds, {c["name"]: c["seconds"] for c in report["checks"]}


def restore_once(work: Path, backup: Backup, jobs: int) -> tuple[float, dict[str, float]]:
    """The same steps by hand on a restore-like export: export (synced), start the server,
    the drill's own pg_amcheck, stop; seconds in all and per step."""
    from pbkfs.mount.drill import amcheck_args

    run = make_owned_dir(work / "restore", 0o755)
    phases: dict[str, float] = {}
    t0 = time.monotonic()
    export(backup, run / "data")
    prepare_datadir(run / "data")
    phases["export"] = time.monotonic() - t0
    pg = PgCluster(run / "data", free_port(), run / "sock")
    try:
        t1 = time.monotonic()
        pg.start()
        phases["start"] = time.monotonic() - t1
        t1 = time.monotonic()
        pg.run([PG_BIN / "pg_amcheck", *amcheck_args(jobs), "-h", pg.sockdir, "-p",
                str(pg.port), "-U", "postgres"], timeout=3600)
        phases["amcheck"] = time.monotonic() - t1
    finally:
        t1 = time.monotonic()
        pg.teardown()
        phases["stop"] = time.monotonic() - t1
    seconds = time.monotonic() - t0
    subprocess.run(["rm", "-rf", str(run)], check=True, timeout=600)
    return seconds, phases


def drill_vs_restore(work: Path, backup: Backup, rounds: int, jobs: list[int]) -> list[str]:
    """Drill and restore alternated round by round, for each pg_amcheck job count; medians."""
    times: dict[str, list[float]] = {}
    phases: dict[str, list[dict[str, float]]] = {}
    for r in range(rounds):
        for j in jobs:
            for kind in ("drill", "restore"):
                key = f"{kind} -j {j}"
                log(f"  round {r + 1}: {key} (load {load1():.2f})")
                s, ph = drill_once(backup, j) if kind == "drill" else \
                    restore_once(work, backup, j)
                times.setdefault(key, []).append(s)
                phases.setdefault(key, []).append(ph)
    lines = ["| pg_amcheck jobs | `pbkfs drill`, median (rounds) | export + start + the "
             "same pg_amcheck + stop, median (rounds) | restore / drill |",
             "| --- | --- | --- | --- |"]
    for j in jobs:
        d, e = times[f"drill -j {j}"], times[f"restore -j {j}"]
        lines.append(f"| {j} | {statistics.median(d):.2f} s ({' / '.join(f'{x:.2f}' for x in d)})"
                     f" | {statistics.median(e):.2f} s ({' / '.join(f'{x:.2f}' for x in e)})"
                     f" | {statistics.median(e) / statistics.median(d):.2f}x |")
    lines += ["", "Phases, medians (s):", ""]
    for key, runs in phases.items():
        names = list(runs[0])
        lines.append(f"* {key}: " + ", ".join(
            f"{n} {statistics.median(p[n] for p in runs):.2f}" for n in names))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=20)
    ap.add_argument("--mounts", type=int, default=20)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", type=Path, default=REPO / "tools" / "bench_results" / "clones.md")
    ap.add_argument("--rounds", type=int, default=1, help="drill: rounds, alternated")
    ap.add_argument("--amcheck-jobs", default="2",
                    help="drill: comma-separated pg_amcheck job counts, each measured")
    ap.add_argument("--parts", default="mounts,reset,drill",
                    help="comma-separated: mounts, reset (with branches), drill")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    out = ["# Many mounts of one backup, reset, drill", "",
           "    .venv/bin/python -m tools.bench_clones " + " ".join(sys.argv[1:]), "",
           f"Load average before the run: {load1():.2f}; 2 CPUs, "
           f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB.", ""]
    with pg_workdir("pbkfs-bench-clones-") as work:
        backup = make_backup(work / "source", args.scale, copy=False)
        if "mounts" in parts:
            out += [f"## {args.mounts} mounts of one scale-{args.scale} backup, "
                    f"`--workers {args.workers}`, each with PostgreSQL", ""]
            out += many_mounts(work, backup, args.mounts, args.workers)
        if "reset" in parts:
            out += ["", "## Branch and reset vs diff size", ""] + reset_times(work, backup)
        if "drill" in parts:
            out += ["", "## Drill vs restore", ""] + drill_vs_restore(
                work, backup, args.rounds, [int(j) for j in args.amcheck_jobs.split(",")])
    text = "\n".join(out) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
