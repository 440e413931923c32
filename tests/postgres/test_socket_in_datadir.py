"""PostgreSQL on a mount with its Unix socket in the data directory itself
(`unix_socket_directories` = the mount): the server's bind() is a MKNOD(S_IFSOCK) on the
mount, and clients connect through that socket file. Twice, across a remount."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.support.mounting import mounted
from tests.support.postgres import PG_BIN, PG_USER, PgCluster, free_port, make_owned_dir

pytestmark = [pytest.mark.mount, pytest.mark.timeout(900)]
BACKUP = ("pg15", "main", "TP2KC3")


def query(pg: PgCluster, host: Path, sql: str) -> str:
    """psql as `postgres` over the socket in `host`."""
    proc = pg.run([PG_BIN / "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", host,
                   "-p", str(pg.port), "-U", PG_USER, "-d", "postgres", "-c", sql])
    return proc.stdout.strip()


def test_unix_socket_in_the_mounted_data_directory(work: Path, fixtures_dir: Path) -> None:
    fixture, instance, backup_id = BACKUP
    mnt = make_owned_dir(work / "mnt", 0o700)
    args = {"store": fixtures_dir / fixture / "catalog", "instance": instance,
            "backup_id": backup_id}
    port = free_port()
    sock = mnt / f".s.PGSQL.{port}"
    for round_ in (1, 2):
        with mounted(mnt, work / "diff", **args):
            with PgCluster(mnt, port, work / "sock") as pg:
                pg.start({"unix_socket_directories": mnt})
                assert stat.S_ISSOCK(os.lstat(sock).st_mode), pg.log_tail()
                assert not list((work / "sock").glob(".s.PGSQL.*"))  # nowhere else
                assert query(pg, mnt, "SHOW unix_socket_directories") == str(mnt)
                if round_ == 1:
                    query(pg, mnt, "CREATE TABLE over_socket AS SELECT 42 AS answer")
                assert query(pg, mnt, "SELECT answer FROM over_socket") == "42"
                pg.stop()
            assert not os.path.lexists(sock)  # removed by the server at shutdown
