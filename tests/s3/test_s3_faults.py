"""A remote store misbehaves (a proxy drops connections, answers 500/503, cuts bodies
short, goes away): reads retry and serve the right bytes, or fail with EIO and a log line
naming the object; never wrong bytes, never a hang; a store that comes back works again."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbkfs.view import open_view
from tests.postgres.test_mount_fixtures import mount_listing
from tests.s3.conftest import store_environment
from tests.support.expected import compare_listing, read_tsv
from tests.support.mounting import mounted
from tests.support.s3proxy import FaultProxy
from tests.support.s3server import S3Server
from tools.s3sync import sync_dir

pytestmark = pytest.mark.mount
BACKUP = ("main", "TP2KB6")  # FULL, zlib


@pytest.fixture(scope="module")
def fault_catalog(s3_server: S3Server, fixtures_dir: Path) -> Iterator[str]:
    bucket = "pbkfs-faults"
    s3_server.make_bucket(bucket)
    url = f"s3://{bucket}/pg15"
    sync_dir(fixtures_dir / "pg15" / "catalog", url, env=s3_server.env())
    with store_environment(s3_server):
        yield url


def config(tmp_path: Path, timeout: float, retries: int) -> tuple[str, ...]:
    """A private, empty cache (every read reaches the store) and short request limits."""
    conf = tmp_path / "pbkfs.toml"
    conf.write_text(f'[store]\ncache_dir = "{tmp_path / "cache"}"\n'
                    f"request_timeout = {timeout}\nmax_retries = {retries}\n")
    os.environ["PBKFS_CONFIG"] = str(conf)
    return ()


def test_reads_retry_through_faults_and_serve_the_right_bytes(
        fault_catalog: str, fault_proxy: FaultProxy, fixtures_dir: Path, work: Path,
        tmp_path: Path) -> None:
    config(tmp_path, timeout=5, retries=10)
    fault_proxy.seed = 7
    fault_proxy.faults = {"500", "503", "drop", "reset", "truncate"}
    fault_proxy.fail_rate = 0.25
    instance, backup_id = BACKUP
    expected = read_tsv(fixtures_dir / "pg15" / "expected" / instance / f"{backup_id}.tsv")
    with mounted(work / "mnt", work / "diff", store=fault_catalog, instance=instance,
                 backup_id=backup_id, extra=("--s3-endpoint", fault_proxy.endpoint)):
        listing = mount_listing(work / "mnt")
    view = open_view(fixtures_dir / "pg15" / "catalog", instance, backup_id)
    tablespaces = dict(view.tablespaces)
    view.close()
    problems = compare_listing(listing, expected, tablespaces, None)
    assert not problems, "\n".join(problems[:20])
    assert fault_proxy.faulted > 10, fault_proxy.faulted  # the faults really happened


def read_file(path: Path) -> str:
    """sha256 of a file, read in a child with a timeout (a hung read fails the test)."""
    code = ("import hashlib,sys;h=hashlib.sha256();f=open(sys.argv[1],'rb')\n"
            "while c:=f.read(1<<20): h.update(c)\nprint(h.hexdigest())")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=120)
    if proc.returncode != 0:
        raise OSError(errno.EIO if "Input/output error" in proc.stderr else 0, proc.stderr)
    return proc.stdout.strip()


def test_a_store_that_goes_away_gives_eio_and_then_works_again(
        fault_catalog: str, fault_proxy: FaultProxy, fixtures_dir: Path, work: Path,
        tmp_path: Path) -> None:
    config(tmp_path, timeout=2, retries=2)
    instance, backup_id = BACKUP
    expected = read_tsv(fixtures_dir / "pg15" / "expected" / instance / f"{backup_id}.tsv")
    victims = sorted((p for p, row in expected.items()
                      if row[0] == "f" and p.startswith("base/") and int(row[2]) > 65536),
                     key=lambda p: -int(expected[p][2]))[:3]
    assert victims
    with mounted(work / "mnt", work / "diff", store=fault_catalog, instance=instance,
                 backup_id=backup_id, extra=("--s3-endpoint", fault_proxy.endpoint)):
        # the workers have opened the backup (listings made) before the store goes away
        assert read_file(work / "mnt" / "PG_VERSION") == expected["PG_VERSION"][3]
        fault_proxy.down = True
        start = time.monotonic()
        with pytest.raises(OSError) as info:
            read_file(work / "mnt" / victims[0])
        assert info.value.errno == errno.EIO, info.value
        assert time.monotonic() - start < 100  # bounded by the request limits, not a hang
        fault_proxy.down = False
        for path in victims:
            assert read_file(work / "mnt" / path) == expected[path][3], path
    log = (work / "diff" / "pbkfs.log").read_text()
    assert "s3://pbkfs-faults/pg15/backups/main/TP2KB6/" in log, log[-3000:]
