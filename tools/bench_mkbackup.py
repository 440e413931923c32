"""Throughput of tools.mkbackup on a pgbench cluster (scale 100 = about 1.5 GB).

    .venv/bin/python -m tools.bench_mkbackup [--scale 100] [--threads 2] [--out FILE]

Builds a fresh PostgreSQL 15 cluster with `pgbench -i -s SCALE` (as the
`postgres` OS user, socket only), then times, through the real command line:
FULL with no compression, FULL with zlib, and DELTA (zlib) after some pgbench
traffic. MB/s = PGDATA bytes the backup had to read (pgdata-bytes of
backup.control) / wall-clock seconds of the whole command, checkpoint and WAL
included. Results go to a Markdown file (default tools/bench_results/mkbackup.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.postgres import pg_workdir, running_cluster  # noqa: E402
from tools.benchreport import cpu_model, write_report  # noqa: E402
from tools.mkbackup.catalogfiles import parse_key_values  # noqa: E402

MB = 1024 * 1024


def _run_backup(cmd: list[str]) -> tuple[str, float]:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"backup failed:\n{proc.stderr}")
    return proc.stdout.strip(), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scale", type=int, default=100)
    ap.add_argument("--threads", "-j", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "tools" / "bench_results" / "mkbackup.md")
    args = ap.parse_args()

    rows: list[tuple[str, str, float, int, int]] = []
    with pg_workdir("pbkfs-bench-") as work:
        with running_cluster(work, options={"max_wal_size": "4GB"}) as pg:
            print(f"pgbench -i -s {args.scale} ...", file=sys.stderr)
            t0 = time.monotonic()
            pg.pgbench(["-i", "-s", str(args.scale), "-q", "postgres"])
            pg.psql("VACUUM ANALYZE; CHECKPOINT;")
            print(f"  {time.monotonic() - t0:.0f}s", file=sys.stderr)
            store = work / "catalog"
            base = [sys.executable, "-m", "tools.mkbackup"]
            subprocess.run([*base, "init", "-B", str(store)], check=True, cwd=REPO)
            subprocess.run(
                [*base, "add-instance", "-B", str(store), "--instance", "main",
                 "-D", str(pg.datadir)],
                check=True, cwd=REPO,
            )
            conn = ["-h", str(pg.sockdir), "-p", str(pg.port), "-U", "postgres"]
            cases = [
                ("FULL, none", ["-b", "FULL", "--compress-algorithm", "none"]),
                ("FULL, zlib", ["-b", "FULL", "--compress-algorithm", "zlib"]),
                ("DELTA, zlib", ["-b", "DELTA", "--compress-algorithm", "zlib"]),
            ]
            commands = []
            # Baseline in the same run: a plain copy of the data directory, made durable.
            copy_dir = work / "plain-copy"
            t0 = time.monotonic()
            subprocess.run(["cp", "-a", str(pg.datadir), str(copy_dir)], check=True)
            subprocess.run(["sync", "-f", str(copy_dir)], check=True)
            copy_seconds = time.monotonic() - t0
            copied = sum(f.stat().st_size for f in copy_dir.rglob("*") if f.is_file())
            rows.append(("baseline: cp -a PGDATA + sync", "-", copy_seconds, copied, copied))
            print(f"  cp -a: {copy_seconds:.1f}s", file=sys.stderr)
            for label, extra in cases:
                if label.startswith("DELTA"):
                    pg.pgbench(["-n", "-c", "2", "-j", "2", "-t", "2000", "postgres"])
                cmd = [*base, "backup", "-B", str(store), "--instance", "main", "--stream",
                       "-j", str(args.threads), *extra, *conn]
                commands.append(shlex.join(["python", *cmd[1:]]))
                print(f"{label} ...", file=sys.stderr)
                bid, seconds = _run_backup(cmd)
                ctl = parse_key_values(store / "backups" / "main" / bid / "backup.control")
                read = int(ctl["pgdata-bytes"])
                written = int(ctl["data-bytes"]) + int(ctl["wal-bytes"])
                rows.append((label, bid, seconds, read, written))
                print(f"  {seconds:.1f}s, {read / MB / seconds:.0f} MB/s", file=sys.stderr)

    lines = [
        "# tools.mkbackup throughput",
        "",
        f"Cluster: PostgreSQL 15, `pgbench -i -s {args.scale}`, data checksums on, 16 MB WAL"
        " segments; backups with `--stream`, fsync on, "
        f"`-j {args.threads}`.",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()}.",
        "",
        "Command (in the repository, after `make setup`):",
        "",
        "    .venv/bin/python -m tools.bench_mkbackup"
        + (f" --scale {args.scale}" if args.scale != 100 else "")
        + (f" -j {args.threads}" if args.threads != 2 else ""),
        "",
        "MB/s = PGDATA bytes read (`pgdata-bytes`) / wall-clock seconds of the whole"
        " `python -m tools.mkbackup backup` command (start checkpoint, copy, stop, WAL).",
        "The cluster was just written by pgbench, so its files are in the OS page cache: this"
        " measures the writer (page checks, compression, CRCs, writes), not a cold disk."
        " The DELTA follows `pgbench -c 2 -t 2000` and still reads every page.",
        "",
        "| backup | seconds | PGDATA read (MB) | written (MB) | MB/s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, _bid, seconds, read, written in rows:
        lines.append(
            f"| {label} | {seconds:.1f} | {read / MB:.0f} | {written / MB:.0f} |"
            f" {read / MB / seconds:.0f} |"
        )
    lines += ["", "Backup commands run (paths are temporary):", ""]
    lines += [f"    {c}" for c in commands]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
