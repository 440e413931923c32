"""tools.mkbackup's WAL archive: archive-push and ARCHIVE-mode backups, against the real thing.

archive-push is checked byte for byte against the real pg_probackup archive of
`pg15-archive` (the same segments pushed again give the same `.gz` files), and
for its rules (plain history/backup/partial files, atomic `.part` + rename, same
content skipped, different content refused unless --overwrite, a crashed push's
temp file taken over, other clusters refused). A real PostgreSQL 15 archiving
through it gets ARCHIVE FULL and DELTA backups laid out like the fixture's, and
`pbkfs show --archive` reads the result as it reads pg_probackup's.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pbkfs.errors import CatalogError, UsageError
from pbkfs.walarchive.names import segment_name
from tests.conftest import REPO
from tests.support.pbkfs_program import server_side_mkbackup
from tests.support.pitr import wait_archived
from tests.support.postgres import (
    PgCluster,
    chown_postgres,
    pg_workdir,
    require_postgres,
    running_cluster,
)
from tools.mkbackup.archive import PushOptions, archive_push
from tools.mkbackup.backup import BackupOptions, run_backup
from tools.mkbackup.catalogfiles import parse_key_values
from tools.mkbackup.instance import add_instance, init_catalog

FIXTURE_INSTANCE = "arch"
PBKFS = Path(sys.executable).parent / "pbkfs"


def keys_in_order(path: Path) -> list[str]:
    return [line.split("=", 1)[0].strip() for line in path.read_text().splitlines()
            if "=" in line and not line.startswith("#")]


# -- archive-push without a server ---------------------------------------------------------

@dataclass
class FakeCluster:
    """A data directory holding only what archive-push reads: pg_control and pg_wal."""

    pgdata: Path
    store: Path

    def wal(self, name: str, data: bytes) -> str:
        (self.pgdata / "pg_wal" / name).write_bytes(data)
        return f"pg_wal/{name}"

    def push(self, name: str, **kw: object) -> tuple[bool, Path]:
        r = archive_push(self.store, FIXTURE_INSTANCE, name, f"pg_wal/{name}",
                         PushOptions(**kw), cwd=self.pgdata)  # type: ignore[arg-type]
        return r.pushed, r.dest

    @property
    def archive(self) -> Path:
        return self.store / "wal" / FIXTURE_INSTANCE


@pytest.fixture
def fake(fixtures_dir: Path, tmp_path: Path) -> FakeCluster:
    """pg15-archive's instance: its pg_probackup.conf, and its cluster's pg_control."""
    catalog = fixtures_dir / "pg15-archive" / "catalog"
    pgdata = tmp_path / "pgdata"
    (pgdata / "global").mkdir(parents=True)
    (pgdata / "pg_wal").mkdir()
    shutil.copy(catalog / "backups" / FIXTURE_INSTANCE / "TP2MRO" / "database" / "global" /
                "pg_control", pgdata / "global" / "pg_control")
    store = tmp_path / "store"
    init_catalog(store)
    (store / "backups" / FIXTURE_INSTANCE).mkdir()
    shutil.copy(catalog / "backups" / FIXTURE_INSTANCE / "pg_probackup.conf",
                store / "backups" / FIXTURE_INSTANCE / "pg_probackup.conf")
    return FakeCluster(pgdata, store)


def test_push_gives_pg_probackups_bytes(fixtures_dir: Path, fake: FakeCluster) -> None:
    real = fixtures_dir / "pg15-archive" / "catalog" / "wal" / FIXTURE_INSTANCE
    files = sorted(p.name for p in real.iterdir())
    assert len(files) == 15
    for stored in files:
        name = stored.removesuffix(".gz")
        raw = (real / stored).read_bytes()
        fake.wal(name, gzip.decompress(raw) if stored.endswith(".gz") else raw)
        pushed, dest = fake.push(name, compress_alg="zlib")
        assert pushed and dest.name == stored
    assert sorted(p.name for p in fake.archive.iterdir()) == files
    for stored in files:
        assert (fake.archive / stored).read_bytes() == (real / stored).read_bytes(), stored
        assert (fake.archive / stored).stat().st_mode & 0o777 == 0o600


def test_push_from_the_command_line(fixtures_dir: Path, fake: FakeCluster) -> None:
    """The archive_command grammar, run where the server runs it (in PGDATA, %p relative)."""
    real = fixtures_dir / "pg15-archive" / "catalog" / "wal" / FIXTURE_INSTANCE
    name = "000000010000000000000017"
    fake.wal(name, gzip.decompress((real / f"{name}.gz").read_bytes()))
    cmd = [sys.executable, "-m", "tools.mkbackup", "archive-push", "-B", str(fake.store),
           "--instance", FIXTURE_INSTANCE, f"--wal-file-path=pg_wal/{name}",
           f"--wal-file-name={name}", "--compress-algorithm=zlib"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(cmd, cwd=fake.pgdata, env=env, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert "pushed: 1, skipped: 0" in r.stderr
    assert (fake.archive / f"{name}.gz").read_bytes() == (real / f"{name}.gz").read_bytes()
    r = subprocess.run(cmd, cwd=fake.pgdata, env=env, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0 and "pushed: 0, skipped: 1" in r.stderr
    fake.wal(name, b"\0" * 100)
    r = subprocess.run(cmd, cwd=fake.pgdata, env=env, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 1
    assert "ERROR:" in r.stderr and "already exists in archive with different checksum" \
        in r.stderr
    r = subprocess.run(cmd[:-1] + ["--compress-algorithm=pglz"], cwd=fake.pgdata, env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 1 and "cannot use pglz for WAL compression" in r.stderr


def test_only_segments_are_compressed(fake: FakeCluster) -> None:
    seg = os.urandom(1024)
    for name in ("00000002.history", "000000010000000000000030.partial",
                 "000000010000000000000030.00000028.backup"):
        fake.wal(name, seg)
        pushed, dest = fake.push(name, compress_alg="zlib")
        assert pushed and dest.name == name and dest.read_bytes() == seg
    fake.wal("000000010000000000000031", seg)
    _pushed, dest = fake.push("000000010000000000000031")
    assert dest.name == "000000010000000000000031" and dest.read_bytes() == seg
    _pushed, dest = fake.push("000000010000000000000031", compress_alg="zlib", compress_level=9)
    assert dest.name == "000000010000000000000031.gz"
    raw = dest.read_bytes()
    assert raw[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03"  # XFL 2: best compression
    assert gzip.decompress(raw) == seg


def test_existing_files_are_kept_unless_overwrite(fake: FakeCluster) -> None:
    name = "000000010000000000000040"
    first, second = os.urandom(4096), os.urandom(4096)
    fake.wal(name, first)
    assert fake.push(name, compress_alg="zlib")[0]
    dest = fake.archive / f"{name}.gz"
    stamp = dest.stat().st_mtime_ns
    assert fake.push(name, compress_alg="zlib") == (False, dest)  # same content: skipped
    assert dest.stat().st_mtime_ns == stamp
    fake.wal(name, second)
    with pytest.raises(CatalogError, match="already exists in archive with different checksum"):
        fake.push(name, compress_alg="zlib")
    assert gzip.decompress(dest.read_bytes()) == first
    assert not list(fake.archive.glob("*.part"))
    assert fake.push(name, compress_alg="zlib", overwrite=True) == (True, dest)
    assert gzip.decompress(dest.read_bytes()) == second
    assert not list(fake.archive.glob("*.part"))


def test_temp_file_of_a_crashed_push_is_taken_over(fake: FakeCluster) -> None:
    name = "000000010000000000000041"
    data = os.urandom(8192)
    fake.wal(name, data)
    fake.archive.mkdir(exist_ok=True)
    (fake.archive / f"{name}.gz.part").write_bytes(b"half a segment")
    assert fake.push(name, compress_alg="zlib", archive_timeout=1)[0]
    assert gzip.decompress((fake.archive / f"{name}.gz").read_bytes()) == data
    assert not (fake.archive / f"{name}.gz.part").exists()


def test_temp_file_still_growing_is_not_taken(fake: FakeCluster) -> None:
    name = "000000010000000000000042"
    fake.wal(name, os.urandom(8192))
    fake.archive.mkdir(exist_ok=True)
    part = fake.archive / f"{name}.gz.part"
    part.write_bytes(b"x")
    stop = threading.Event()

    def grow() -> None:
        while not stop.is_set():
            with open(part, "ab") as f:
                f.write(b"x" * 100)
            time.sleep(0.1)

    writer = threading.Thread(target=grow)
    writer.start()
    try:
        with pytest.raises(CatalogError, match="another push is still writing"):
            fake.push(name, compress_alg="zlib", archive_timeout=2)
    finally:
        stop.set()
        writer.join()
    assert part.exists() and not (fake.archive / f"{name}.gz").exists()


def test_refusals(fake: FakeCluster, tmp_path: Path) -> None:
    name = "000000010000000000000043"
    fake.wal(name, b"x" * 100)
    with pytest.raises(UsageError, match="pglz"):
        fake.push(name, compress_alg="pglz")
    with pytest.raises(UsageError, match="--wal-file-name"):
        archive_push(fake.store, FIXTURE_INSTANCE, "../escape", cwd=fake.pgdata)
    with pytest.raises(CatalogError, match="cannot open source WAL file"):
        fake.push("000000010000000000000044")
    with pytest.raises(CatalogError, match="runs in the server's data directory"):
        archive_push(fake.store, FIXTURE_INSTANCE, name, cwd=tmp_path)
    conf = fake.store / "backups" / FIXTURE_INSTANCE / "pg_probackup.conf"
    conf.write_text(conf.read_text().replace("system-identifier = 7", "system-identifier = 6"))
    with pytest.raises(CatalogError, match="refuse to push WAL file"):
        fake.push(name)
    assert not list(fake.archive.iterdir())


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
