"""Fixtures shared by every layer (registered by tests/conftest.py).

* `fixtures_dir`: the real fixture sets, unpacked once per session;
* `work`: a scratch directory the `postgres` OS user can enter;
* `base`: a small plain directory to mount with --plain-base;
* `datadir`: a data directory with an empty pg_wal/, for archive-get;
* `fake`: a fake cluster (pg_control + pg_wal) archiving into a fresh catalog;
* an automatic check that a test marked `mount` or `postgres` has what it needs
  (skipped locally, failed in CI, when it is missing).
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.archive_push import FakeCluster, fake_cluster
from tests.support.env import CACHE_DIR, SHARED_FIXTURES, require
from tests.support.mounting import require_fuse
from tests.support.postgres import pg_workdir, require_postgres


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Directory holding the unpacked real fixture sets (pg15, pg15-bigrel, pg15-archive)."""
    unpack = SHARED_FIXTURES / "unpack"
    require(unpack.exists(), f"fixture sets at {SHARED_FIXTURES}")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # one unpacker at a time: parallel test workers share the cache directory
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run([sys.executable, str(unpack), str(CACHE_DIR)], check=True,
                       capture_output=True)
    return CACHE_DIR


@pytest.fixture(autouse=True)
def _required_facilities(request: pytest.FixtureRequest) -> None:
    """A test marked `mount` needs /dev/fuse and fusermount3; one marked `postgres` needs
    PostgreSQL 15 and its OS user. Missing: skipped locally, failed in CI."""
    if request.node.get_closest_marker("mount") is not None:
        require_fuse()
    if request.node.get_closest_marker("postgres") is not None:
        require_postgres()


@pytest.fixture
def work(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory under /tmp that `postgres` can enter (pytest's tmp_path is
    root-only), named after the test module; removed afterwards, whatever happened."""
    module = request.node.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    with pg_workdir(f"pbkfs-{module}-") as w:
        yield w


@pytest.fixture
def base(work: Path) -> Path:
    """A plain directory to mount: dir/file, 8000 bytes of "content\\n"."""
    b = work / "base"
    (b / "dir").mkdir(parents=True)
    (b / "dir" / "file").write_bytes(b"content\n" * 1000)
    return b


@pytest.fixture
def datadir(tmp_path: Path) -> Path:
    """A data directory holding an empty pg_wal/: where archive-get delivers."""
    d = tmp_path / "data"
    (d / "pg_wal").mkdir(parents=True)
    return d


@pytest.fixture
def fake(fixtures_dir: Path, tmp_path: Path) -> FakeCluster:
    """pg15-archive's instance: its pg_probackup.conf, and its cluster's pg_control."""
    return fake_cluster(fixtures_dir, tmp_path)
