"""Queries that spill to temporary files, on a busy mount, beside a CPU hog.

A sort, a hash join or an index build larger than `work_mem` writes temporary files under
`base/pgsql_tmp` through the mount, reads them back and unlinks them when the query ends
(every close a FLUSH, every unlink a removal waiting for the journal). Such a query once
hung forever in `close()` on a busy machine. Here several spill at once, with pgbench
writing beside them and a busy-looping process per core: every query finishes with
exactly the result computed outside PostgreSQL, no temporary file is left, and after a
remount with the caches dropped the data is the same.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.load import cpu_hog, drop_caches
from tests.support.mounting import mounted
from tests.support.postgres import PgCluster, free_port, make_owned_dir

pytestmark = [pytest.mark.mount, pytest.mark.timeout(900)]
BACKUP = ("pg15", "main", "TP2KC3")
ROWS = 200_000
SERVER = {"work_mem": "64kB", "maintenance_work_mem": "1MB", "log_temp_files": "0",
          "max_parallel_workers_per_gather": "2", "min_parallel_table_scan_size": "0",
          "parallel_setup_cost": "0", "parallel_tuple_cost": "0"}


def expected_digest() -> str:
    """md5 of every row's text joined in sorted order, computed without PostgreSQL."""
    texts = sorted(hashlib.md5(str(i).encode()).hexdigest() for i in range(1, ROWS + 1))
    return hashlib.md5(",".join(texts).encode()).hexdigest()


def queries() -> dict[str, tuple[str, str]]:
    """Each spilling query and the answer it must give."""
    total = ROWS * (ROWS + 1) // 2
    return {
        "ordered aggregate (sort)": (
            "SELECT md5(string_agg(t, ',' ORDER BY t)) FROM spill", expected_digest()),
        "hash join in batches": (
            "SET enable_mergejoin = off; SET enable_nestloop = off; "
            "SELECT count(*), sum(a.id + b.id) FROM spill a JOIN spill b USING (t)",
            f"{ROWS}|{2 * total}"),
        "index build (external sort)": (
            "CREATE INDEX spill_t ON spill (t); "
            "SET enable_seqscan = off; SET enable_bitmapscan = off; "
            "SELECT count(*) FROM (SELECT t FROM spill ORDER BY t) s; DROP INDEX spill_t",
            str(ROWS)),
    }


def test_spilling_queries_beside_pgbench_and_a_cpu_hog_finish_exactly(
        fixtures_dir: Path, work: Path) -> None:
    fixture, instance, backup_id = BACKUP
    args = {"store": fixtures_dir / fixture / "catalog", "instance": instance,
            "backup_id": backup_id}
    mnt, diff = make_owned_dir(work / "mnt", 0o700), work / "diff"
    tmp_dir = mnt / "base" / "pgsql_tmp"
    with mounted(mnt, diff, **args):
        with PgCluster(mnt, free_port(), work / "sock") as pg:
            pg.start(SERVER)
            pg.psql(f"CREATE TABLE spill (id int, t text); INSERT INTO spill "
                    f"SELECT g, md5(g::text) FROM generate_series(1, {ROWS}) g; "
                    "ANALYZE spill")
            answers: dict[str, list[str]] = {}
            errors: list[str] = []

            def run(name: str, sql: str) -> None:
                try:
                    for _ in range(3):
                        out = pg.psql(sql).splitlines()
                        answers.setdefault(name, []).append(out[-1] if out else "")
                except Exception as exc:  # reported by the assertion below
                    errors.append(f"{name}: {exc}")

            def bench() -> None:
                try:
                    pg.pgbench(["-n", "-c", "4", "-j", "2", "-T", "20", "postgres"])
                except Exception as exc:
                    errors.append(f"pgbench: {exc}")

            jobs: list[Callable[[], None]] = [bench]
            for name, (sql, _) in queries().items():
                jobs.append(functools.partial(run, name, sql))
            with cpu_hog():
                threads = [threading.Thread(target=job) for job in jobs]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(timeout=800)
                assert not any(t.is_alive() for t in threads), "a spilling query hung"
            assert not errors, errors
            for name, (_, want) in queries().items():
                assert answers[name] == [want] * 3, (name, answers.get(name))
            # the queries spilled (the log names each temporary file) and left none behind
            assert "temporary file" in pg.log_tail(10_000_000), pg.log_tail()
            assert not tmp_dir.exists() or not any(tmp_dir.iterdir()), list(tmp_dir.iterdir())
            pg.psql("CHECKPOINT")
            before = pg.psql("SELECT count(*), sum(id), md5(string_agg(t, '' ORDER BY id)) "
                             "FROM spill")
            pg.stop()
    drop_caches()
    with mounted(mnt, diff):
        with PgCluster(mnt, free_port(), work / "sock") as pg:
            pg.start()
            after = pg.psql("SELECT count(*), sum(id), md5(string_agg(t, '' ORDER BY id)) "
                            "FROM spill")
            assert after == before
            pg.stop()
