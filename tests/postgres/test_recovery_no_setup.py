"""An archive-mode mount recovers with no extra set-up: `make setup` builds .venv on
Debian's own python3, so the `postgres` user can run the `.venv/bin/pbkfs` that
restore_command names (no PBKFS_PROGRAM, no wrapper)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.env import REPO, require
from tests.support.mounting import force_unmount, is_mounted
from tests.support.pitr import wait_until_promoted
from tests.support.postgres import PG_USER, PgCluster, free_port, make_owned_dir
from tests.support.queries import run_queries

pytestmark = pytest.mark.mount
PBKFS = Path(sys.executable).parent / "pbkfs"


def postgres_can_run_pbkfs() -> bool:
    proc = subprocess.run(["runuser", "-u", PG_USER, "--", str(PBKFS), "--version"],
                          capture_output=True, text=True, timeout=60, cwd="/tmp")
    return proc.returncode == 0


def test_archive_mount_recovers_without_a_wrapper(fixtures_dir: Path, work: Path) -> None:
    require(postgres_can_run_pbkfs(), f"{PBKFS} runnable by {PG_USER} (make setup builds "
            ".venv on /usr/bin/python3)")
    base = fixtures_dir / "pg15-archive"
    expected = json.loads((base / "expected" / "arch" / "TP2MRO.immediate.queries.json")
                          .read_text())
    mnt, diff = make_owned_dir(work / "mnt"), work / "diff"
    env = {k: v for k, v in os.environ.items() if k != "PBKFS_PROGRAM"}
    proc = subprocess.run([str(PBKFS), "mount", "-B", str(base / "catalog"), "--instance",
                           "arch", "-i", "TP2MRO", "-D", str(mnt), "-d", str(diff)],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr
    try:
        conf = (mnt / "postgresql.auto.conf").read_text()
        assert f"restore_command = '\"{PBKFS}\" archive-get" in conf, conf
        with PgCluster(mnt, free_port(), make_owned_dir(work / "sock", 0o755)) as pg:
            pg.start()
            wait_until_promoted(pg)
            got = run_queries(pg, expected["sql"], expected["no_generic_md5"])
            pg.stop()
            assert "archive-get: delivered" in pg.log_tail(200_000)
        for key in ("server", "databases"):
            assert got[key] == expected[key], key
    finally:
        subprocess.run([str(PBKFS), "unmount", "-D", str(mnt)], capture_output=True,
                       timeout=300, cwd=REPO)
        if is_mounted(mnt):
            force_unmount(mnt, diff)
