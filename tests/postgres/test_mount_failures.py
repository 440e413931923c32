"""Failures inside a mount: a worker killed under load is noticed, restarted from its
on-disk state, and the mount keeps serving; nothing hangs and nothing committed is lost."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.support.mounting import is_mounted, mount_pids, mounted
from tests.support.postgres import (
    PG_BIN,
    PgCluster,
    free_port,
    make_owned_dir,
)

pytestmark = pytest.mark.mount
BACKUP = ("pg15", "main", "TP2KC3")


def children(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(entry))
    return out


def test_killed_worker_is_restarted_under_pgbench(fixtures_dir: Path, work: Path) -> None:
    fixture, instance, backup_id = BACKUP
    mnt, diff = make_owned_dir(work / "mnt"), work / "diff"
    with mounted(mnt, diff, store=fixtures_dir / fixture / "catalog", instance=instance,
                 backup_id=backup_id, workers=2):
        frontend = mount_pids(diff)[0]
        workers = children(frontend)
        assert len(workers) == 2, workers
        with PgCluster(mnt, free_port(), make_owned_dir(work / "sock", 0o755)) as pg:
            pg.start()
            result: dict[str, str] = {}
            # pgbench may be cut short: an fsync the dead worker had in flight fails with
            # EIO, and PostgreSQL answers a failed fsync with PANIC and crash recovery
            bench: list[str | os.PathLike[str]] = [
                PG_BIN / "pgbench", "-h", pg.sockdir, "-p", str(pg.port), "-U", "postgres",
                "-n", "-c", "4", "-j", "2", "-T", "15", "postgres"]
            load = threading.Thread(target=lambda: result.update(
                out=pg.run(bench, check=False).stdout))
            load.start()
            time.sleep(4)
            victim = min(workers)
            os.kill(victim, signal.SIGKILL)
            load.join(timeout=240)
            assert not load.is_alive(), "pgbench hung after a worker died"
            # a new worker took the dead one's place; the mount is still there
            deadline = time.monotonic() + 60
            while len(children(frontend) - {victim}) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(children(frontend) - {victim}) == 2, children(frontend)
            assert is_mounted(mnt)
            # PostgreSQL may have gone through its own crash recovery (an fsync the dead
            # worker could not confirm is an I/O error to it); it must be serving again
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if pg.psql("SELECT 1") == "1":
                        break
                except Exception:
                    time.sleep(1)
            after = pg.pgbench(["-n", "-c", "2", "-j", "2", "-t", "100", "postgres"]).stdout
            failed = re.search(r"number of failed transactions: (\d+)", after)
            assert failed is not None and int(failed.group(1)) == 0, after
            count = int(pg.psql("SELECT count(*) FROM pgbench_accounts"))
            assert count == 100000
            pg.stop()
        log = (diff / "pbkfs.log").read_text(errors="replace")
        assert f"(pid {victim}) exited with status -9" in log, log[-2000:]
        assert "starting a new one" in log, log[-2000:]



def test_busy_unmount_names_holders_then_force(fixtures_dir: Path, work: Path) -> None:
    """A busy mount is refused naming who holds it; --force stops it hard and detaches; the
    next mount of the diff recovers."""
    import subprocess

    from tests.support.mounting import mount, pbkfs

    fixture, instance, backup_id = BACKUP
    catalog = fixtures_dir / fixture / "catalog"
    mnt, diff = make_owned_dir(work / "mnt"), work / "diff"
    mount(mnt, diff, store=catalog, instance=instance, backup_id=backup_id)
    with open(mnt / "PG_VERSION", "rb") as held:
        holder = subprocess.Popen(["sleep", "120"], stdin=held)
    try:
        proc = pbkfs("unmount", "-D", str(mnt), check=False)
        assert proc.returncode != 0
        assert "busy" in proc.stderr and f"{holder.pid} (sleep)" in proc.stderr, proc.stderr
        assert is_mounted(mnt)
        forced = pbkfs("unmount", "-D", str(mnt), "--force", check=False)
        assert forced.returncode == 0, forced.stderr
        assert not is_mounted(mnt)
    finally:
        holder.kill()
        holder.wait()
    mount(mnt, diff, store=catalog, instance=instance, backup_id=backup_id)
    try:
        assert (mnt / "PG_VERSION").read_text() == "15\n"
    finally:
        pbkfs("unmount", "-D", str(mnt), check=False)
