"""tools.mkbackup's archive-push run as a program, the way archive_command runs it."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

from tests.support.archive_push import FIXTURE_INSTANCE, FakeCluster
from tests.support.env import REPO


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
