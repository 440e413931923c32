"""Two mounts of one backup in a bucket at once, each with its own diff and PostgreSQL,
sharing the host's cache of fetched bytes; `pbkfs stat` shows what the store cost."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.s3.conftest import store_environment
from tests.support.env import REPO
from tests.support.mounting import mounted
from tests.support.postgres import PgCluster, free_port, make_owned_dir
from tests.support.s3server import S3Server
from tools.s3sync import sync_dir

pytestmark = [pytest.mark.mount, pytest.mark.postgres]


@pytest.fixture(scope="module")
def catalog_url(s3_server: S3Server, fixtures_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    bucket = "pbkfs-two-mounts"
    s3_server.make_bucket(bucket)
    url = f"s3://{bucket}/pg15"
    sync_dir(fixtures_dir / "pg15" / "catalog", url, env=s3_server.env())
    conf = tmp_path_factory.mktemp("s3conf") / "pbkfs.toml"
    conf.write_text(f'[store]\ncache_dir = "{conf.parent / "cache"}"\n')
    with store_environment(s3_server, PBKFS_CONFIG=str(conf)):
        yield url


def stat_json(mnt: Path) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-m", "pbkfs.cli.entry", "stat", "-D", str(mnt),
                           "--format", "json"], capture_output=True, text=True, timeout=60,
                          cwd=REPO, check=True)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_two_mounts_of_one_backup_share_the_cache(catalog_url: str, work: Path) -> None:
    mounts = [make_owned_dir(work / f"mnt{i}", 0o700) for i in (1, 2)]
    with mounted(mounts[0], work / "diff1", store=catalog_url, instance="main",
                 backup_id="TP2KC3"), \
            PgCluster(mounts[0], free_port(), work / "sock1") as pg1:
        pg1.start()
        deadline = time.monotonic() + 60
        log = work / "diff1" / "pbkfs.log"
        pg1.psql("CREATE TABLE only_here AS SELECT g FROM generate_series(1, 1000) g")
        counts = pg1.psql("SELECT count(*) FROM pg_class")
        # the catalogs of a database are fetched once a backend connects to it; nobody
        # connects to template0 (base/4), so its catalogs are never fetched
        while "for a connection to base/5" not in log.read_text():
            assert time.monotonic() < deadline, f"no prefetch for a connection:\n{log.read_text()}"
            time.sleep(0.2)
        assert "for a connection to base/4" not in log.read_text()
        first = stat_json(mounts[0])["store"]
        assert isinstance(first, dict)
        assert first["requests"] > 0 and first["bytes_fetched"] > 0 and first["failures"] == 0
        with mounted(mounts[1], work / "diff2", store=catalog_url, instance="main",
                     backup_id="TP2KC3"), \
                PgCluster(mounts[1], free_port(), work / "sock2") as pg2:
            pg2.start()
            assert pg2.psql("SELECT to_regclass('only_here') IS NULL").strip() == "t"
            pg2.psql("CREATE TABLE only_there (x int)")
            assert pg1.psql("SELECT to_regclass('only_there') IS NULL").strip() == "t"
            assert pg1.psql("SELECT sum(g) FROM only_here").strip() == "500500"
            assert pg2.psql("SELECT count(*) FROM pg_class") != ""
            second = stat_json(mounts[1])["store"]
            assert isinstance(second, dict)
            # the second mount read what the first had fetched from the shared cache
            assert second["cache_hits"] > 0
            assert second["bytes_fetched"] < first["bytes_fetched"], (first, second)
            pg2.stop()
        pg1.stop()
    assert counts


def test_the_cache_survives_a_remount(catalog_url: str, work: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """What a mount fetched is read from the host's cache by the next mount of the diff."""
    conf = tmp_path / "pbkfs.toml"
    conf.write_text(f'[store]\ncache_dir = "{tmp_path / "cache"}"\n')  # empty at first
    monkeypatch.setenv("PBKFS_CONFIG", str(conf))
    mnt = make_owned_dir(work / "mnt", 0o700)
    fetched = []
    for _ in range(2):
        with mounted(mnt, work / "diff", store=catalog_url, instance="main",
                     backup_id="TP2KBJ"):
            with PgCluster(mnt, free_port(), work / "sock") as pg:
                pg.start()
                assert int(pg.psql("SELECT count(*) FROM pg_class")) > 0
                pg.stop()
            store = stat_json(mnt)["store"]
            assert isinstance(store, dict)
            fetched.append(int(store["bytes_fetched"]))
    assert fetched[1] < fetched[0] / 4, fetched
