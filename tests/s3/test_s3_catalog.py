"""Catalogs in an S3 bucket (a real SeaweedFS on loopback) read exactly as on local disk:
`show` (also --archive, JSON), `verify`, `archive-get` and mounts with PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres.test_mount_fixtures import BIG, SMALL, check_backup
from tests.s3.conftest import store_environment
from tests.support.env import REPO
from tests.support.mounting import mounted
from tests.support.pbkfs_program import restore_program
from tests.support.pitr import wait_until_promoted
from tests.support.postgres import PgCluster, free_port, make_owned_dir
from tests.support.queries import run_queries
from tests.support.s3server import S3Server
from tools.s3sync import sync_dir

pytestmark = [pytest.mark.mount, pytest.mark.postgres]
SETS = ("pg15", "pg15-archive", "pg15-bigrel")


@pytest.fixture(scope="module")
def s3_catalogs(s3_server: S3Server, fixtures_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The fixture catalogs uploaded to one bucket; the AWS variables and a private cache
    directory set for every pbkfs process the tests start."""
    bucket = "pbkfs-fixtures"
    s3_server.make_bucket(bucket)
    urls = {}
    for name in SETS:
        urls[name] = f"s3://{bucket}/{name}"
        sync_dir(fixtures_dir / name / "catalog", urls[name], env=s3_server.env())
    # readable by the server's OS user too: restore_command runs `pbkfs archive-get` as it
    confdir = Path(tempfile.mkdtemp(prefix="pbkfs-s3conf-"))
    confdir.chmod(0o755)
    conf = confdir / "pbkfs.toml"
    conf.write_text(f'[store]\ncache_dir = "{confdir / "cache"}"\n')
    conf.chmod(0o644)
    try:
        with store_environment(s3_server, PBKFS_CONFIG=str(conf)):
            yield urls
    finally:
        shutil.rmtree(confdir, ignore_errors=True)


def pbkfs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pbkfs.cli.entry", *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


@pytest.mark.parametrize("name", SETS)
@pytest.mark.parametrize("extra", [(), ("--format", "json"), ("--archive",),
                                   ("--archive", "--format", "json")])
def test_show_is_identical(s3_catalogs: dict[str, str], fixtures_dir: Path, name: str,
                           extra: tuple[str, ...]) -> None:
    local = pbkfs("show", "-B", str(fixtures_dir / name / "catalog"), *extra)
    remote = pbkfs("show", "-B", s3_catalogs[name], *extra)
    assert local.returncode == 0, local.stderr
    assert (remote.returncode, remote.stdout, remote.stderr) == (0, local.stdout, "")


@pytest.mark.parametrize(("instance", "backup_id"), [("main", "TP2KC3"), ("nochk", "TP2KD0")])
def test_verify_is_identical(s3_catalogs: dict[str, str], fixtures_dir: Path, instance: str,
                             backup_id: str) -> None:
    local = pbkfs("verify", "-B", str(fixtures_dir / "pg15" / "catalog"), "--instance",
                  instance, "-i", backup_id)
    remote = pbkfs("verify", "-B", s3_catalogs["pg15"], "--instance", instance, "-i",
                   backup_id)
    assert local.returncode == 0, local.stderr
    def untimed(text: str) -> str:
        return re.sub(r"checked in [0-9.]+s", "checked in ?s", text)

    assert (remote.returncode, untimed(remote.stdout)) == (0, untimed(local.stdout))


def test_archive_get_delivers_the_same_bytes(s3_catalogs: dict[str, str], fixtures_dir: Path,
                                             tmp_path: Path) -> None:
    wal = fixtures_dir / "pg15-archive" / "catalog" / "wal"
    (instance,) = [p.name for p in wal.iterdir()]
    names = sorted({p.name.split(".")[0] for p in (wal / instance).iterdir()})
    assert names
    for name in names:
        got = {}
        for where, store in (("local", str(fixtures_dir / "pg15-archive" / "catalog")),
                             ("s3", s3_catalogs["pg15-archive"])):
            out = tmp_path / f"{where}-{name}"
            proc = pbkfs("archive-get", "-B", store, "--instance", instance,
                         "--wal-file-path", str(out), "--wal-file-name", name)
            got[where] = (proc.returncode,
                          hashlib.sha256(out.read_bytes()).hexdigest() if out.exists() else None)
        assert got["s3"] == got["local"], name


@pytest.mark.parametrize(("fixture", "instance", "backup_id"),
                         [*SMALL, pytest.param(*BIG[1], marks=pytest.mark.slow)])
def test_mount_from_s3_is_what_restore_wrote(s3_catalogs: dict[str, str], fixtures_dir: Path,
                                             work: Path, fixture: str, instance: str,
                                             backup_id: str) -> None:
    check_backup(fixtures_dir, work, fixture, instance, backup_id, store=s3_catalogs[fixture])


@pytest.fixture(scope="module")
def program(s3_catalogs: dict[str, str]) -> Iterator[Path]:
    """A pbkfs the server's OS user can run, for restore_command."""
    with restore_program() as prog:
        yield prog


@pytest.mark.parametrize("kind", ["immediate", "latest"])
@pytest.mark.parametrize("backup_id", ["TP2MRO", "TP2MRQ", "TP2MRW"])
def test_archive_backup_from_s3_recovers_like_restore(
        s3_catalogs: dict[str, str], program: Path, fixtures_dir: Path, work: Path,
        backup_id: str, kind: str) -> None:
    """WAL from the bucket's archive through restore_command (archive-get -B s3://...)."""
    expected = json.loads((fixtures_dir / "pg15-archive" / "expected" / "arch" /
                           f"{backup_id}.{kind}.queries.json").read_text())
    url = s3_catalogs["pg15-archive"]
    mnt, diff = make_owned_dir(work / "mnt"), work / "diff"
    extra = [] if kind == "immediate" else ["--recovery-target=latest"]
    with mounted(mnt, diff, store=url, instance="arch", backup_id=backup_id, extra=extra):
        conf = (mnt / "postgresql.auto.conf").read_text()
        assert f'archive-get -B "{url}" --instance "arch" --s3-endpoint' in conf
        with PgCluster(mnt, free_port(), make_owned_dir(work / "sock", 0o755)) as pg:
            pg.start()
            wait_until_promoted(pg)
            got = run_queries(pg, expected["sql"], expected["no_generic_md5"])
            pg.stop()
            log = pg.log_tail(200_000)
        for key in ("server", "tablespaces", "databases"):
            assert got[key] == expected[key], key
        assert "archive-get: delivered" in log
