"""Session-wide fixtures: the real catalogs, unpacked once into a cache directory."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = (REPO / ".." / "shared" / "fixtures").resolve()
CACHE_DIR = Path(os.environ.get("PBKFS_FIXTURE_CACHE", REPO / ".cache" / "fixtures"))


def in_ci() -> bool:
    """CI must fail, not skip, when a required facility is missing."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, what: str) -> None:
    """Skip locally but fail in CI when `what` is unavailable."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"required for this test but missing: {what}")
    pytest.skip(f"missing: {what}")


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
