"""PostgreSQL under load on a mount: pgbench, unmount/remount, crashes of everything.

* pgbench -c 16 -j 2 -T 30 finishes with zero failed transactions; after unmount and
  remount every committed transaction is there; pg_amcheck finds nothing.
* Clients record every commit PostgreSQL acknowledged; then PostgreSQL is stopped with
  `-m immediate` and every pbkfs process gets kill -9 in the middle of the load. After
  a remount PostgreSQL recovers and every acknowledged commit is present.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tests.support.mounting import kill9_mount, mount, mounted, unmount
from tests.support.postgres import (
    PG_BIN,
    PgCluster,
    free_port,
    make_owned_dir,
)

pytestmark = pytest.mark.mount
BACKUP = ("pg15", "main", "TP2KC3")


def totals(pg: PgCluster) -> tuple[int, int]:
    out = pg.psql("SELECT count(*), sum(delta) FROM pgbench_history").split("|")
    return int(out[0]), int(out[1] or 0)


def amcheck(pg: PgCluster) -> None:
    proc = pg.run([PG_BIN / "pg_amcheck", "-h", pg.sockdir, "-p", str(pg.port), "-U",
                   "postgres", "--all", "--heapallindexed", "--install-missing"], check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_pgbench_then_remount_keeps_every_commit(fixtures_dir: Path, work: Path) -> None:
    fixture, instance, backup_id = BACKUP
    catalog = fixtures_dir / fixture / "catalog"
    mnt = make_owned_dir(work / "mnt", 0o700)
    diff = work / "diff"
    args = {"store": catalog, "instance": instance, "backup_id": backup_id}
    with mounted(mnt, diff, **args):
        with PgCluster(mnt, free_port(), work / "sock") as pg:
            pg.start()
            before = totals(pg)
            res = pg.pgbench(["-n", "-c", "16", "-j", "2", "-T", "30", "postgres"])
            done = int(re.search(r"number of transactions actually processed: (\d+)",
                                 res.stdout).group(1))  # type: ignore[union-attr]
            failed = re.search(r"number of failed transactions: (\d+)", res.stdout)
            assert failed is not None and int(failed.group(1)) == 0, res.stdout
            assert done > 0
            after = totals(pg)
            assert after[0] == before[0] + done
            pg.stop()
    # a new mount of the same diff: everything committed is still there
    with mounted(mnt, diff, **args):
        with PgCluster(mnt, free_port(), work / "sock") as pg:
            pg.start()
            assert totals(pg) == after
            amcheck(pg)
            pg.stop()


def test_kill9_everything_under_load_loses_no_commit(fixtures_dir: Path, work: Path) -> None:
    fixture, instance, backup_id = BACKUP
    catalog = fixtures_dir / fixture / "catalog"
    mnt = make_owned_dir(work / "mnt", 0o700)
    diff = work / "diff"
    args = {"store": catalog, "instance": instance, "backup_id": backup_id}
    acked: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()
    mount(mnt, diff, **args)  # type: ignore[arg-type]
    pg = PgCluster(mnt, free_port(), work / "sock")
    try:
        pg.start()
        pg.psql("CREATE TABLE commits (id int PRIMARY KEY, pad text);"
                "CREATE TABLE big (id serial, pad text)")
        pg.psql("INSERT INTO big (pad) SELECT repeat('x', 500) FROM generate_series(1, 20000)")

        def client(k: int) -> None:
            try:
                with psycopg.connect(**pg.conninfo()) as conn:
                    i = k
                    while not stop.is_set():
                        with conn.transaction():
                            conn.execute("INSERT INTO commits VALUES (%s, repeat('y', 300))",
                                         (i,))
                            conn.execute("UPDATE big SET pad = pad WHERE id = %s",
                                         (i % 20000 + 1,))
                        with lock:
                            acked.append(i)  # PostgreSQL said COMMIT succeeded
                        i += 8
            except psycopg.Error:
                return  # the server went away: the kill

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(acked) < 800 and time.monotonic() < deadline:
            time.sleep(0.1)
        pg.psql("CHECKPOINT")  # data files written and fsynced through the mount too
        while len(acked) < 1600 and time.monotonic() < deadline:
            time.sleep(0.1)
        pg.run([PG_BIN / "pg_ctl", "-D", mnt, "-m", "immediate", "-w", "stop"], check=False)
        killed = kill9_mount(diff)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert len(killed) == 3
    finally:
        stop.set()
        pg.teardown()
        unmount(mnt, diff)
    with acked_lock_copy(lock, acked) as committed:
        assert len(committed) >= 800
        with mounted(mnt, diff, **args):
            with PgCluster(mnt, free_port(), work / "sock") as pg2:
                pg2.start()
                assert "redo done" in pg2.log_tail(100_000)
                present = {int(x) for x in pg2.psql("SELECT id FROM commits").split()}
                missing = set(committed) - present
                assert not missing, f"{len(missing)} acknowledged commits lost"
                amcheck(pg2)
                pg2.stop()


class acked_lock_copy:  # noqa: N801 - a tiny context manager
    def __init__(self, lock: threading.Lock, items: list[int]) -> None:
        self.lock = lock
        self.items = items

    def __enter__(self) -> list[int]:
        with self.lock:
            return list(self.items)

    def __exit__(self, *exc: object) -> None:
        return None
