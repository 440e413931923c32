"""`make demo`: a backup becomes a running, writable database in seconds.

Builds a small PostgreSQL 15 cluster with pgbench data, backs it up with
`tools.mkbackup` (FULL, then DELTA after some traffic), mounts the DELTA with
pbkfs, starts PostgreSQL on the mount, runs pgbench against it, shows what the
diff directory holds and that the backup was not touched, then cleans up.
Run as root (PostgreSQL itself runs as the `postgres` OS user).

`--s3` (`make demo-s3`): the catalog is uploaded to a SeaweedFS S3 server started on
loopback, and the DELTA is mounted from `s3://` (only the pages PostgreSQL reads are
fetched, into a local cache).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pbkfs.mount.listing import allocated  # noqa: E402
from tests.support.postgres import (  # noqa: E402
    PgCluster,
    free_port,
    make_owned_dir,
    pg_workdir,
    running_cluster,
)

PBKFS = [sys.executable, "-m", "pbkfs.cli.entry"]
MKBACKUP = [sys.executable, "-m", "tools.mkbackup"]
SCALE = 10


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def run(cmd: list[str], quiet: bool = False) -> str:
    shown = " ".join(["pbkfs" if c == "pbkfs.cli.entry" else c for c in cmd[2:]]) \
        if cmd[:2] in (PBKFS[:2], MKBACKUP[:2]) else " ".join(cmd)
    prefix = "python -m " if cmd[:2] == MKBACKUP[:2] and cmd[2] == "tools.mkbackup" else ""
    print(f"$ {prefix}{shown}", flush=True)
    proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True, timeout=600)
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"demo: command failed ({proc.returncode})")
    if not quiet:
        sys.stdout.write(proc.stdout)
    return proc.stdout


def tps(output: str) -> str:
    for line in output.splitlines():
        if line.startswith("tps ="):
            return line.split("=")[1].split("(")[0].strip()
    return "?"


def main() -> int:
    if os.geteuid() != 0:
        raise SystemExit("demo: run as root (PostgreSQL runs as the postgres user)")
    s3 = "--s3" in sys.argv[1:]
    with pg_workdir("pbkfs-demo-") as work, contextlib.ExitStack() as stack:
        store = work / "catalog"
        step(f"1. A PostgreSQL 15 cluster with pgbench data (scale {SCALE})")
        with running_cluster(work, name="source") as src:
            src.pgbench(["-i", "-s", str(SCALE), "-q", "postgres"])
            counts_src = src.psql("SELECT count(*) FROM pgbench_accounts")
            print(f"source cluster: {src.datadir}, {counts_src} pgbench_accounts rows")
            conn = ["-h", str(src.sockdir), "-p", str(src.port), "-U", "postgres"]

            step("2. Back it up in pg_probackup's format: FULL, traffic, then DELTA")
            run([*MKBACKUP, "init", "-B", str(store)])
            run([*MKBACKUP, "add-instance", "-B", str(store), "--instance", "demo",
                 "-D", str(src.datadir)])
            run([*MKBACKUP, "backup", "-B", str(store), "--instance", "demo", "-b", "FULL",
                 "--stream", "--compress-algorithm", "zlib", *conn], quiet=True)
            src.pgbench(["-n", "-c", "2", "-j", "2", "-t", "500", "postgres"])
            delta = run([*MKBACKUP, "backup", "-B", str(store), "--instance", "demo", "-b",
                         "DELTA", "--stream", "--compress-algorithm", "pglz", *conn],
                        quiet=True).strip()
            balance_src = src.psql("SELECT sum(abalance) FROM pgbench_accounts")
        run([*PBKFS, "show", "-B", str(store)])
        source, extra = str(store), []
        if s3:
            step("2b. Put the catalog in an S3 bucket (SeaweedFS on 127.0.0.1)")
            from tests.support.s3server import S3Server

            server = stack.enter_context(S3Server.start(make_owned_dir(work / "s3", 0o755)))
            server.make_bucket("pbkfs-demo")
            os.environ.update(server.env())  # credentials and endpoint the standard AWS way
            source = "s3://pbkfs-demo/catalog"
            run([sys.executable, "-m", "tools.s3sync", str(store), source])
            extra = ["--cache-dir", str(work / "s3cache")]
            run([*PBKFS, "show", "-B", source, *extra])

        step(f"3. Mount DELTA {delta} from {source} (read-only; changes go to a diff)")
        mnt = make_owned_dir(work / "mnt")
        diff = work / "diff"
        t0 = time.monotonic()
        run([*PBKFS, "mount", "-B", source, "--instance", "demo", "-i", delta,
             "-D", str(mnt), "-d", str(diff), "--workers", "2", *extra])
        try:
            pg = PgCluster(mnt, free_port(), make_owned_dir(work / "sock", 0o755))
            with pg:
                pg.start()
                first = pg.psql("SELECT sum(abalance) FROM pgbench_accounts")
                ready = time.monotonic() - t0
                print(f"PostgreSQL is up on the mount and answered in {ready:.1f}s after "
                      f"`pbkfs mount` started: sum(abalance) = {first} "
                      f"(source at backup time: {balance_src})")
                if first != balance_src:
                    raise SystemExit("demo: the mount does not show the backup's data")

                step("4. pgbench on the mounted backup (15 s, 4 clients)")
                out = pg.pgbench(["-n", "-c", "4", "-j", "2", "-T", "15", "postgres"]).stdout
                print(f"TPS on the mount: {tps(out)}")
                pg.stop()
            step("5. What the mount did (live figures from pbkfs stat)")
            run([*PBKFS, "stat", "-D", str(mnt)])

            step("6. What the diff holds")
            print(f"backup catalog: {allocated(str(store)) / 1e6:.1f} MB on disk (never written)")
            print(f"diff directory: {allocated(str(diff)) / 1e6:.1f} MB on disk: every block "
                  "PostgreSQL changed, the new WAL, and the names created, renamed or removed")
        finally:
            step("7. Unmount and check the backup is intact")
            run([*PBKFS, "unmount", "-D", str(mnt)])
        run([*PBKFS, "verify", "-B", source, "--instance", "demo", "-i", delta, *extra])
        print("\nDone: the work directory is removed; remounting the same diff would have "
              "resumed where it stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
