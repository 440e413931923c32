"""`pbkfs drill`: a fixture backup passes (mount, start, recovery, amcheck, SQL checks);
a failing check, a corrupted backup and an interrupted drill fail with the reason, and no
drill leaves a mount, a process or a directory behind."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbkfs.catalog.store import Store
from tests.support.env import REPO
from tests.support.mounting import require_fuse

pytestmark = pytest.mark.mount


def drill(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pbkfs.cli.entry", "drill", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def leftovers() -> list[str]:
    """Drill state still around: work directories, mounts, processes."""
    found = glob.glob("/tmp/pbkfs-drill-*")
    with open("/proc/self/mounts") as f:
        found += [line.split()[1] for line in f if "pbkfs-drill-" in line]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"pbkfs-drill-" in f.read():
                    found.append(f"process {pid}")
        except OSError:
            continue
    return found


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Iterator[None]:
    require_fuse()
    assert leftovers() == []
    yield
    deadline = time.monotonic() + 30
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers() == []


def test_a_fixture_backup_passes(fixtures_dir: Path, tmp_path: Path) -> None:
    check = tmp_path / "check.sql"
    check.write_text("SELECT count(*) > 0 FROM pg_class")
    proc = drill("-B", str(fixtures_dir / "pg15" / "catalog"), "--instance", "main", "-i",
                 "TP2KC3", "--sql", str(check), "--format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["backup"] == "TP2KC3"
    assert report["chain"].startswith("TP2KB6")
    assert [c["name"] for c in report["checks"]] == ["mount", "start", "recovery", "amcheck",
                                                    f"sql {check}"]
    assert all(c["ok"] for c in report["checks"]) and report["recovery_end"]
    assert "fsync off" in report["checks"][1]["detail"]  # a throwaway server


def test_a_kept_drill_stops_its_server_cleanly(fixtures_dir: Path) -> None:
    """--keep: the server runs with fsync on and stops with a shutdown checkpoint, so the
    kept diff is a clean one."""
    proc = drill("-B", str(fixtures_dir / "pg15" / "catalog"), "--instance", "main", "-i",
                 "TP2KC3", "--no-amcheck", "--keep", "--format", "json")
    report = json.loads(proc.stdout)
    kept = Path(report["kept"])
    try:
        assert proc.returncode == 0 and report["ok"], proc.stdout + proc.stderr
        assert "fsync on" in report["checks"][1]["detail"]
        log = (kept / "sock" / "postgresql.log").read_text()
        assert "database system is shut down" in log, log[-2000:]
        assert (kept / "diff" / "objects").is_dir()
    finally:
        shutil.rmtree(kept, ignore_errors=True)


def test_a_failing_check_fails_the_drill(fixtures_dir: Path, tmp_path: Path) -> None:
    check = tmp_path / "no.sql"
    check.write_text("SELECT count(*) = 0 FROM pg_class")
    proc = drill("-B", str(fixtures_dir / "pg15" / "catalog"), "--instance", "main", "-i",
                 "TP2KB6", "--no-amcheck", "--sql", str(check))
    assert proc.returncode == 1
    assert f"FAILED: {check}: returned False, not true" in proc.stdout


def test_a_corrupted_backup_fails_naming_the_file(fixtures_dir: Path, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog"
    shutil.copytree(fixtures_dir / "pg15" / "catalog", catalog, symlinks=True)
    backup = Store(catalog).instance("main").backup("TP2KB6")
    victim = max((e for e in backup.pgdata_entries.values()
                  if e.is_datafile and e.n_headers > 4 and e.path.startswith("base/")
                  and int(e.path.rsplit("/", 1)[1].split(".")[0].split("_")[0]) >= 16384),
                 key=lambda e: e.size)
    stored = Path(str(backup.stored_path(victim)))
    raw = bytearray(stored.read_bytes())
    for i in range(len(raw) // 3, len(raw) // 3 + 64):
        raw[i] ^= 0x5A
    stored.write_bytes(bytes(raw))
    proc = drill("-B", str(catalog), "--instance", "main", "-i", "TP2KB6")
    assert proc.returncode == 1, proc.stdout
    assert "FAILED" in proc.stdout and victim.path in proc.stdout, proc.stdout


@pytest.mark.parametrize("after", [0.3, 1.5, 3.0])
def test_an_interrupted_drill_leaves_nothing(fixtures_dir: Path, after: float) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "pbkfs.cli.entry", "drill", "-B",
                             str(fixtures_dir / "pg15" / "catalog"), "--instance", "main",
                             "-i", "TP2KC3"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    proc.send_signal(signal.SIGINT if after < 1 else signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 or "PASSED" in out, out + err


def test_a_bad_job_count_is_refused_naming_the_option(fixtures_dir: Path) -> None:
    proc = drill("-B", str(fixtures_dir / "pg15" / "catalog"), "--instance", "main", "-i",
                 "TP2KC3", "--jobs", "0")
    assert proc.returncode == 2 and "--jobs" in proc.stderr, proc.stderr


def test_one_amcheck_connection_passes_too(fixtures_dir: Path) -> None:
    proc = drill("-B", str(fixtures_dir / "pg15" / "catalog"), "--instance", "main", "-i",
                 "TP2KC3", "--jobs", "1", "--format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [c["name"] for c in json.loads(proc.stdout)["checks"]][-1] == "amcheck"
