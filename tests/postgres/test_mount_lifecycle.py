"""`pbkfs mount` with PostgreSQL's OS user and server: owner and modes as the mount point
and the backup say, reads that write nothing, --local-wal under a running server."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.support.mounting import is_mounted, mounted, pbkfs
from tests.support.postgres import (
    PgCluster,
    free_port,
    make_owned_dir,
    postgres_ids,
    require_postgres,
)

pytestmark = pytest.mark.mount


def test_reads_never_write_and_owner_is_the_mount_point_owner(
    work: Path, fixtures_dir: Path
) -> None:
    """Lessons 28, 30, 36: reading everything writes nothing; EOF past the size; modes from
    the backup's list, owner from the mount point."""
    require_postgres()
    uid, gid = postgres_ids()
    mnt = make_owned_dir(work / "mnt", 0o700)
    diff = work / "diff"
    with mounted(mnt, diff, store=fixtures_dir / "pg15" / "catalog", instance="main",
                 backup_id="TP2KBV"):
        objects_before = sorted(os.listdir(diff / "objects"))
        for dirpath, dirnames, filenames in os.walk(mnt):
            for name in dirnames + filenames:
                st = os.lstat(os.path.join(dirpath, name))
                assert (st.st_uid, st.st_gid) == (uid, gid)
            for name in filenames:
                p = os.path.join(dirpath, name)
                size = os.stat(p).st_size
                with open(p, "rb") as f:
                    assert len(f.read()) == size
                    f.seek(size + 8192)
                    assert f.read(100) == b""  # EOF, not zeros
        assert sorted(os.listdir(diff / "objects")) == objects_before
        assert objects_before == ["1", "1.map"]  # postgresql.auto.conf with the settings
        assert stat.S_IMODE(os.stat(mnt / "backup_label").st_mode) == 0o644
        assert stat.S_IMODE(os.stat(mnt / "PG_VERSION").st_mode) == 0o600


def test_local_wal_mount_runs_postgresql(work: Path, fixtures_dir: Path) -> None:
    """--local-wal: pg_wal is a symlink to the diff's wal/ (readable, survives remounts)."""
    require_postgres()
    mnt = make_owned_dir(work / "mnt", 0o700)
    diff = work / "diff"
    args = {"store": fixtures_dir / "pg15" / "catalog", "instance": "main",
            "backup_id": "TP2KC3", "extra": ["--local-wal"]}
    with mounted(mnt, diff, **args):
        assert os.readlink(mnt / "pg_wal") == str(diff / "wal")
        with PgCluster(mnt, free_port(), work / "sock") as pg:
            pg.start()
            pg.psql("CREATE TABLE w AS SELECT g FROM generate_series(1, 1000) g")
            pg.pgbench(["-n", "-c", "4", "-t", "50", "postgres"])
            pg.stop()
    with mounted(mnt, diff, **args):
        with PgCluster(mnt, free_port(), work / "sock") as pg:
            pg.start()
            assert pg.psql("SELECT count(*) FROM w") == "1000"
            pg.stop()
    proc = pbkfs("mount", "-D", str(mnt), "-d", str(diff), "-B",
                 str(fixtures_dir / "pg15" / "catalog"), "--instance", "main", "-i", "TP2KC3",
                 check=False)
    assert proc.returncode != 0 and "--local-wal" in proc.stderr
    assert not is_mounted(mnt)
