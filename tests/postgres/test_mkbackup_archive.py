"""tools.mkbackup's WAL archive with a real PostgreSQL 15 archiving through archive-push:
ARCHIVE FULL and DELTA backups laid out like the fixture's, and `pbkfs show --archive`
reads the result as it reads pg_probackup's (archive-push alone: tests/unit/)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pbkfs.errors import CatalogError
from pbkfs.walarchive.names import segment_name
from tests.support.archive_push import FIXTURE_INSTANCE
from tests.support.pbkfs_program import server_side_mkbackup
from tests.support.pitr import wait_archived
from tests.support.postgres import (
    PgCluster,
    chown_postgres,
    pg_workdir,
    require_postgres,
    running_cluster,
)
from tools.mkbackup.backup import BackupOptions, run_backup
from tools.mkbackup.catalogfiles import parse_key_values
from tools.mkbackup.instance import add_instance, init_catalog

PBKFS = Path(sys.executable).parent / "pbkfs"


def keys_in_order(path: Path) -> list[str]:
    return [line.split("=", 1)[0].strip() for line in path.read_text().splitlines()
            if "=" in line and not line.startswith("#")]


# -- ARCHIVE-mode backups of a real server ---------------------------------------------------

@dataclass
class ArchiveEnv:
    pg: PgCluster
    store: Path
    full: str
    delta: str
    last_segment: str
    command: str  # the archive_command


def archive_options(pg: PgCluster, mode: str, compress_alg: str = "none",
                    archive_timeout: int = 120) -> BackupOptions:
    return BackupOptions(mode=mode, stream=False, compress_alg=compress_alg,
                         archive_timeout=archive_timeout, host=str(pg.sockdir), port=pg.port,
                         user="postgres", sync=False)


@pytest.fixture(scope="module")
def archived() -> Iterator[ArchiveEnv]:
    require_postgres()
    with server_side_mkbackup() as program, pg_workdir("pbkfs-mkarch-") as work:
        store = work / "catalog"
        command = (f"{program} archive-push -B {store} --instance {FIXTURE_INSTANCE} "
                   "--wal-file-path=%p --wal-file-name=%f --compress-algorithm=zlib")
        # archive_command in postgresql.auto.conf (not -c), so a test can change it
        with running_cluster(work, initdb_args=["--wal-segsize=1"],
                             options={"archive_mode": "on"}) as pg:
            init_catalog(store)
            add_instance(store, FIXTURE_INSTANCE, pg.datadir)
            chown_postgres(store, recursive=True)
            with pg.connect() as c:
                c.execute(f"ALTER SYSTEM SET archive_command = '{command}'")
                c.execute("SELECT pg_reload_conf()")
            pg.psql("CREATE TABLE t AS SELECT g, md5(g::text) AS v FROM generate_series(1, 20000)"
                    " g; CREATE INDEX ON t (v); CHECKPOINT")
            full = run_backup(store, FIXTURE_INSTANCE,
                              archive_options(pg, "FULL", compress_alg="zlib"))
            pg.psql("UPDATE t SET v = v || 'x' WHERE g % 10 = 0; CREATE TABLE u AS SELECT 1 a")
            delta = run_backup(store, FIXTURE_INSTANCE,
                               archive_options(pg, "DELTA", compress_alg="pglz"))
            pg.psql("INSERT INTO u VALUES (2)")
            segment = pg.psql("SELECT pg_walfile_name(pg_switch_wal())")
            wait_archived(pg, segment)
            chown_postgres(store, recursive=True)
            yield ArchiveEnv(pg, store, full.backup_id, delta.backup_id, segment, command)


def test_archive_backups_look_like_pg_probackups(fixtures_dir: Path,
                                                 archived: ArchiveEnv) -> None:
    real = fixtures_dir / "pg15-archive" / "catalog" / "backups" / FIXTURE_INSTANCE
    mine = archived.store / "backups" / FIXTURE_INSTANCE
    seg = int(parse_key_values(mine / "pg_probackup.conf")["xlog-seg-size"])
    assert seg == 1 << 20
    wal = archived.store / "wal" / FIXTURE_INSTANCE
    for backup_id, like in ((archived.full, "TP2MRO"), (archived.delta, "TP2MRW")):
        bdir = mine / backup_id
        assert keys_in_order(bdir / "backup.control") == keys_in_order(real / like /
                                                                      "backup.control")
        ctl = parse_key_values(bdir / "backup.control")
        assert ctl["stream"] == "false" and ctl["status"] == "OK"
        start = int(ctl["start-lsn"].split("/")[1], 16)
        stop = int(ctl["stop-lsn"].split("/")[1], 16)
        assert int(ctl["wal-bytes"]) == max(stop // seg - start // seg, 1) * seg
        content = (bdir / "backup_content.control").read_text()
        assert '{"path":"pg_wal", "size":"0", "mode":"16832",' in content
        assert '"path":"pg_wal/' not in content
        assert (bdir / "database" / "pg_wal").is_dir()
        assert not list((bdir / "database" / "pg_wal").iterdir())
        assert "BACKUP METHOD: streamed" in (bdir / "database" / "backup_label").read_text()
        for segno in range(start // seg, stop // seg + 1):
            gz = wal / f"{segment_name(1, segno, seg)}.gz"
            assert gz.read_bytes()[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\x03"
            assert len(gzip.decompress(gz.read_bytes())) == seg
        assert (wal / f"{segment_name(1, start // seg, seg)}.{start % seg:08X}.backup").is_file()
    assert not list(wal.glob("*.part"))
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in wal.iterdir())


def _pbkfs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PBKFS), *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_show_archive_reads_it_like_pg_probackups(fixtures_dir: Path,
                                                  archived: ArchiveEnv) -> None:
    real = fixtures_dir / "pg15-archive"
    r = _pbkfs("show", "-B", str(archived.store), "--archive")
    assert r.returncode == 0, r.stderr
    mine_lines = r.stdout.splitlines()
    real_lines = (real / "show-archive.txt").read_text().splitlines()
    assert mine_lines[:5] == real_lines[:5]  # blank, title, rule, column names, rule
    row = mine_lines[5].split()
    assert row[:3] == ["1", "0", "0/0"] and row[-2:] == ["2", "OK"]
    assert row[4] == archived.last_segment

    r = _pbkfs("show", "-B", str(archived.store), "--archive", "--format", "json")
    assert r.returncode == 0, r.stderr
    (mine,) = json.loads(r.stdout)
    (ref,) = json.loads((real / "show-archive.json").read_text())
    assert list(mine) == list(ref)
    (tl,) = mine["timelines"]
    (ref_tl,) = ref["timelines"]
    assert list(tl) == list(ref_tl)
    assert tl["status"] == "OK" and tl["lost-segments"] == []
    assert [b["id"] for b in tl["backups"]] == [archived.delta, archived.full]
    for b, ref_b in zip(tl["backups"], ref_tl["backups"][::2], strict=True):
        assert list(b) == list(ref_b)
        assert b["wal"] == "ARCHIVE" and b["status"] == "OK"

    r = _pbkfs("verify", "-B", str(archived.store), "--instance", FIXTURE_INSTANCE,
               "-i", archived.delta)
    assert r.returncode == 0, r.stdout + r.stderr


def test_archive_backup_waits_for_archiving_and_fails_clearly(archived: ArchiveEnv) -> None:
    """A server whose archive_command fails: the backup gives up after --archive-timeout,
    says why, and is left ERROR."""
    pg = archived.pg
    pg.psql("ALTER SYSTEM SET archive_command = 'false'; SELECT pg_reload_conf()")
    try:
        with pytest.raises(CatalogError, match=r"was not archived in 3 seconds.*failure"):
            run_backup(archived.store, FIXTURE_INSTANCE,
                       archive_options(pg, "DELTA", archive_timeout=3))
    finally:
        with pg.connect() as c:
            c.execute(f"ALTER SYSTEM SET archive_command = '{archived.command}'")
            c.execute("SELECT pg_reload_conf()")
    mine = archived.store / "backups" / FIXTURE_INSTANCE
    failed = [p for p in mine.iterdir() if p.is_dir()
              and p.name not in (archived.full, archived.delta)]
    assert len(failed) == 1
    assert parse_key_values(failed[0] / "backup.control")["status"] == "ERROR"
