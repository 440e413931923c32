"""What DBAs do to a restored database, on a mount: copy, drop, rewrite and move.

Each of these reaches pbkfs in its own way: `CREATE DATABASE ... STRATEGY FILE_COPY`
copies backup files at the file level (read, write, fsync of every file and directory),
`WAL_LOG` through shared buffers; `DROP DATABASE` removes a whole directory of backup
files (whiteouts, no data copied); `VACUUM FULL`, `CLUSTER` and `REINDEX` write new
relation files and unlink the backup's; `ALTER TABLE ... SET TABLESPACE` copies a
relation between the data directory and a tablespace; `TRUNCATE` cuts a backup file to
nothing. Then `pg_basebackup` of the server on the mount, started elsewhere, must hold the
same rows, and so must the mount after an unmount, dropped caches and a remount.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.load import drop_caches
from tests.support.mounting import mounted
from tests.support.postgres import (
    PG_BIN,
    PgCluster,
    free_port,
    make_owned_dir,
    table_fingerprint,
)

pytestmark = [pytest.mark.mount, pytest.mark.timeout(900)]
DB2_OID = 16602  # db2 of the backup (fixture README)

OPERATIONS = [
    "CREATE DATABASE copy_wal TEMPLATE db2 STRATEGY WAL_LOG",
    "CREATE DATABASE copy_fc TEMPLATE db2 STRATEGY FILE_COPY TABLESPACE ts1",
    "DROP DATABASE db2",
    "VACUUM FULL items",
    "CLUSTER pgbench_accounts USING pgbench_accounts_pkey",
    "REINDEX TABLE toast_docs",
    "ALTER TABLE ts_table SET TABLESPACE pg_default",
    "ALTER TABLE toast_docs SET TABLESPACE ts1",
    "TRUNCATE truncate_me",
]


def amcheck(pg: PgCluster) -> None:
    proc = pg.run([PG_BIN / "pg_amcheck", "-h", pg.sockdir, "-p", str(pg.port), "-U",
                   "postgres", "--all", "--heapallindexed", "--install-missing"], check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


@pytest.mark.parametrize("backup_id", ["TP2KC3", "TP2KCC"])  # a DELTA chain, a zlib FULL
def test_copy_drop_rewrite_and_move_then_basebackup_and_remount(
        fixtures_dir: Path, work: Path, backup_id: str) -> None:
    args = {"store": fixtures_dir / "pg15" / "catalog", "instance": "main",
            "backup_id": backup_id}
    mnt, diff = make_owned_dir(work / "mnt", 0o700), work / "diff"
    with mounted(mnt, diff, **args):
        with PgCluster(mnt, free_port(), work / "sock") as pg:
            pg.start()
            before = table_fingerprint(pg)
            db2 = {k.split("/", 1)[1]: v for k, v in before.items() if k.startswith("db2/")}
            assert db2 and before["postgres/public.truncate_me"][0] > 0
            for sql in OPERATIONS:
                pg.psql(sql)
            after = table_fingerprint(pg)
            for name in ("copy_wal", "copy_fc"):
                assert {k.split("/", 1)[1]: v for k, v in after.items()
                        if k.startswith(f"{name}/")} == db2, name
            assert not any(k.startswith("db2/") for k in after)
            assert not (mnt / "base" / str(DB2_OID)).exists()
            expected = {k: v for k, v in before.items() if k.startswith("postgres/")}
            expected["postgres/public.truncate_me"] = (0, None)
            assert {k: v for k, v in after.items() if k.startswith("postgres/")} == expected
            # a base backup of the server on the mount reads every file of it
            copy = PgCluster(make_owned_dir(work / "copy", 0o755) / "data", free_port(),
                             work / "copysock")
            pg.run([PG_BIN / "pg_basebackup", "-h", pg.sockdir, "-p", str(pg.port), "-U",
                    "postgres", "-D", copy.datadir, "-X", "stream", "-c", "fast"])
            with copy:
                copy.start()
                assert table_fingerprint(copy) == after
                copy.stop()
            pg.psql("CHECKPOINT")
            pg.stop()
    drop_caches()
    with mounted(mnt, diff):
        with PgCluster(mnt, free_port(), work / "sock") as pg:
            pg.start()
            assert table_fingerprint(pg) == after
            amcheck(pg)
            pg.stop()
