"""Catalogs in an S3 bucket (a real SeaweedFS on loopback) read exactly as on local disk:
`show` (also --archive, JSON), `verify`, `archive-get` and mounts with PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres.test_mount_fixtures import SMALL, check_backup
from tests.support.env import REPO
from tests.support.s3server import S3Server
from tools.s3sync import sync_dir

pytestmark = [pytest.mark.mount, pytest.mark.postgres]
SETS = ("pg15", "pg15-archive")


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
    conf = tmp_path_factory.mktemp("s3conf") / "pbkfs.toml"
    conf.write_text(f'[store]\ncache_dir = "{conf.parent / "cache"}"\n')
    saved = dict(os.environ)
    os.environ.update(s3_server.env(), PBKFS_CONFIG=str(conf))
    try:
        yield urls
    finally:
        os.environ.clear()
        os.environ.update(saved)


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
                         [SMALL[0], SMALL[3], SMALL[6]])  # FULL, DELTA chain, other instance
def test_mount_from_s3_is_what_restore_wrote(s3_catalogs: dict[str, str], fixtures_dir: Path,
                                             work: Path, fixture: str, instance: str,
                                             backup_id: str) -> None:
    check_backup(fixtures_dir, work, fixture, instance, backup_id, store=s3_catalogs[fixture])
