"""`pbkfs archive-get` run as a program, the way PostgreSQL's restore_command runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

from pbkfs.cli.archive_get import EXIT_MISSING


def test_pbkfs_archive_get_command_line(fixtures_dir: Path, datadir: Path) -> None:
    """The real command line, as restore_command runs it (pg_probackup's grammar)."""
    catalog = fixtures_dir / "pg15-archive" / "catalog"
    proc = subprocess.run(
        [sys.executable, "-m", "pbkfs.cli.main", "archive-get", "-B", str(catalog),
         "--instance", "arch", "--wal-file-path=pg_wal/000000010000000000000021",
         "--wal-file-name=000000010000000000000021"],
        cwd=datadir, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    got = (datadir / "pg_wal" / "000000010000000000000021").read_bytes()
    assert got == zlib.decompress((catalog / "wal" / "arch" / "000000010000000000000021.gz")
                                  .read_bytes(), wbits=31)
    env = {**os.environ, "BACKUP_PATH": str(catalog)}
    proc = subprocess.run(
        [sys.executable, "-m", "pbkfs.cli.main", "archive-get", "--instance", "arch",
         "--wal-file-path=pg_wal/x", "--wal-file-name=000000010000000000000099"],
        cwd=datadir, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert proc.returncode == EXIT_MISSING and "not in the WAL archive" in proc.stderr
