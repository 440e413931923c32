"""`pbkfs mount` with PostgreSQL's OS user and server: owner and modes as the mount point
and the backup say, reads that write nothing, both WAL layouts under a running server."""

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


def test_local_wal_is_the_default_and_runs_postgresql(work: Path, fixtures_dir: Path) -> None:
    """A new diff of a data directory keeps pg_wal in the diff's wal/, bind-mounted over
    the mount's pg_wal (a directory, as restore makes it); WAL PostgreSQL writes lands
    there and survives remounts; the diff keeps that layout; --wal-through-mount on it is
    refused, naming the layout it was made with; unmount takes the bind mount along."""
    require_postgres()
    mnt = make_owned_dir(work / "mnt", 0o700)
    diff = work / "diff"
    args = {"store": fixtures_dir / "pg15" / "catalog", "instance": "main",
            "backup_id": "TP2KC3"}
    with mounted(mnt, diff, **args):
        assert not os.path.islink(mnt / "pg_wal") and (mnt / "pg_wal").is_dir()
        assert os.path.ismount(mnt / "pg_wal")
        assert sorted(os.listdir(mnt / "pg_wal")) == sorted(os.listdir(diff / "wal"))
        with PgCluster(mnt, free_port(), work / "sock") as pg:
            pg.start()
            pg.psql("CREATE TABLE w AS SELECT g FROM generate_series(1, 1000) g")
            pg.pgbench(["-n", "-c", "4", "-t", "50", "postgres"])
            segment = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
            assert (diff / "wal" / segment).is_file()  # written past the mount
            busy = pbkfs("unmount", "-D", str(mnt), check=False)
            assert busy.returncode != 0 and "busy" in busy.stderr, busy.stderr
            assert is_mounted(mnt) and os.path.ismount(mnt / "pg_wal")
            pg.stop()
    assert not is_mounted(mnt) and not is_mounted(mnt / "pg_wal")
    with mounted(mnt, diff, **args, extra=["--local-wal"]):
        with PgCluster(mnt, free_port(), work / "sock") as pg:
            pg.start()
            assert pg.psql("SELECT count(*) FROM w") == "1000"
            pg.stop()
    proc = pbkfs("mount", "-D", str(mnt), "-d", str(diff), "-B",
                 str(fixtures_dir / "pg15" / "catalog"), "--instance", "main", "-i", "TP2KC3",
                 "--wal-through-mount", check=False)
    assert proc.returncode != 0 and "--local-wal" in proc.stderr
    assert not is_mounted(mnt)


def test_wal_through_mount_keeps_pg_wal_in_the_mount(work: Path, fixtures_dir: Path) -> None:
    """--wal-through-mount: pg_wal is a directory of the mount, PostgreSQL runs on it, and
    the diff keeps that layout when mounted again without the flag."""
    require_postgres()
    mnt = make_owned_dir(work / "mnt", 0o700)
    diff = work / "diff"
    args = {"store": fixtures_dir / "pg15" / "catalog", "instance": "main",
            "backup_id": "TP2KC3"}
    with mounted(mnt, diff, **args, extra=["--wal-through-mount"]):
        assert not os.path.islink(mnt / "pg_wal") and (mnt / "pg_wal").is_dir()
        with PgCluster(mnt, free_port(), work / "sock") as pg:
            pg.start()
            pg.psql("CREATE TABLE w AS SELECT g FROM generate_series(1, 500) g")
            pg.stop()
    assert not (diff / "wal").exists()
    with mounted(mnt, diff, **args):
        assert not os.path.islink(mnt / "pg_wal")
        with PgCluster(mnt, free_port(), work / "sock") as pg:
            pg.start()
            assert pg.psql("SELECT count(*) FROM w") == "500"
            pg.stop()
