"""--perf-unsafe and --no-wal with PostgreSQL 15 running on the mount: a clean unmount
persists what the deferred fsyncs held; --no-wal keeps WAL outside the diff and the diff is
never mounted again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.mounting import is_mounted, mounted, pbkfs, stat_json
from tests.support.postgres import PgCluster, free_port, make_owned_dir, require_postgres

pytestmark = pytest.mark.mount


def test_perf_unsafe_postgresql_survives_clean_unmount(work: Path, fixtures_dir: Path) -> None:
    require_postgres()
    mnt = make_owned_dir(work / "mnt", 0o700)
    diff = work / "diff"
    args = {"store": fixtures_dir / "pg15" / "catalog", "instance": "main",
            "backup_id": "TP2KC3"}
    with mounted(mnt, diff, **args, extra=["--perf-unsafe"]):  # type: ignore[arg-type]
        with PgCluster(mnt, free_port(), work / "sock") as pg:
            pg.start()
            pg.psql("CREATE TABLE u AS SELECT g FROM generate_series(1, 5000) g")
            pg.pgbench(["-i", "-s", "1", "postgres"])
            pg.stop()
        assert stat_json(mnt)["deferred_fsyncs"] > 0
    assert not (diff / "dirty").exists()
    with mounted(mnt, diff, **args):  # type: ignore[arg-type]
        with PgCluster(mnt, free_port(), work / "sock") as pg:
            pg.start()
            assert pg.psql("SELECT count(*) FROM u") == "5000"
            assert pg.psql("SELECT count(*) FROM pgbench_accounts") == "100000"
            pg.stop()


def test_no_wal_keeps_wal_outside_and_refuses_remount(work: Path, fixtures_dir: Path) -> None:
    require_postgres()
    mnt = make_owned_dir(work / "mnt", 0o700)
    diff = work / "diff"
    store = fixtures_dir / "pg15" / "catalog"
    args = {"store": store, "instance": "main", "backup_id": "TP2KC3"}
    with mounted(mnt, diff, **args, extra=["--no-wal"]):  # type: ignore[arg-type]
        scratch = Path(os.readlink(mnt / "pg_wal"))
        assert scratch.is_dir() and not str(scratch).startswith(str(diff) + os.sep)
        with PgCluster(mnt, free_port(), work / "sock") as pg:
            pg.start()  # replays and writes WAL, reads it back
            pg.psql("CREATE TABLE n AS SELECT g FROM generate_series(1, 1000) g")
            pg.psql("CHECKPOINT")
            assert pg.psql("SELECT count(*) FROM n") == "1000"
            pg.stop()
        assert any(p.stat().st_size > 0 for p in scratch.iterdir() if p.is_file())
    assert not scratch.exists()
    assert json.loads((diff / "binding.json").read_bytes())["resumable"] is False
    before = sorted(p.name for p in diff.iterdir())
    proc = pbkfs("mount", "-D", str(mnt), "-d", str(diff), "-B", str(store), "--instance",
                 "main", "-i", "TP2KC3", check=False)
    assert proc.returncode != 0 and "--no-wal" in proc.stderr and str(diff) in proc.stderr
    assert not is_mounted(mnt) and sorted(p.name for p in diff.iterdir()) == before
