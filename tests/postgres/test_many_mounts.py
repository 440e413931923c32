"""Ten mounts of one backup at once, each with its own diff and its own PostgreSQL doing
different writes: none sees another's changes, and each keeps its own after a remount."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from tests.support.mounting import mounted
from tests.support.postgres import PgCluster, free_port, make_owned_dir

pytestmark = pytest.mark.mount
N = 10


def test_ten_mounts_of_one_backup_are_independent(fixtures_dir: Path, work: Path) -> None:
    catalog = fixtures_dir / "pg15" / "catalog"
    with contextlib.ExitStack() as stack:
        servers = []
        for i in range(N):
            mnt = make_owned_dir(work / f"mnt{i}", 0o700)
            stack.enter_context(mounted(mnt, work / f"diff{i}", store=catalog,
                                        instance="main", backup_id="TP2KC3",
                                        extra=("--workers", "1")))
            pg = stack.enter_context(PgCluster(mnt, free_port(),
                                               make_owned_dir(work / f"sock{i}", 0o755)))
            pg.start({"shared_buffers": "16MB", "max_connections": "10"})
            servers.append(pg)
        for i, pg in enumerate(servers):
            pg.psql(f"CREATE TABLE mine_{i} AS SELECT g FROM generate_series(1, {100 * (i + 1)}) g;"
                    f" UPDATE pg_database SET datallowconn = datallowconn")  # a catalog write
        for i, pg in enumerate(servers):
            tables = pg.psql("SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class "
                             "WHERE relname LIKE 'mine_%'")
            assert tables == f"mine_{i}", (i, tables)
            assert int(pg.psql(f"SELECT count(*) FROM mine_{i}")) == 100 * (i + 1)
        for pg in servers:
            pg.stop()
    # each diff kept its own change
    for i in (0, N - 1):
        mnt = work / f"mnt{i}"
        with mounted(mnt, work / f"diff{i}", store=catalog, instance="main",
                     backup_id="TP2KC3"), \
                PgCluster(mnt, free_port(), work / f"sock{i}") as pg:
            pg.start()
            assert int(pg.psql(f"SELECT count(*) FROM mine_{i}")) == 100 * (i + 1)
            pg.stop()
