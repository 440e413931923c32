"""`pbkfs verify` run as a program on the real catalogs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(("fixture", "instance", "backup_id"), [
    ("pg15", "main", "TP2KC3"), ("pg15", "main", "TP2KCC"), ("pg15", "nochk", "TP2KD0"),
    ("pg15-archive", "arch", "TP2MRW"),
])
def test_verify_real_backups(fixtures_dir: Path, fixture: str, instance: str,
                             backup_id: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pbkfs.cli.main", "verify", "-B",
         str(fixtures_dir / fixture / "catalog"), "--instance", instance, "-i", backup_id],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK:") and "0 problems" in proc.stdout
