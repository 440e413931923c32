"""Fault injection on real mounts under PostgreSQL load; nothing acknowledged may be lost.

The oracle (tests/support/faults.py, `IdLoad`): clients commit unique increasing ids, each
transaction also adding 1 to a random `pgbench_accounts` row (a relation of the backup,
so its pages are written through pbkfs), and an id counts as acknowledged only once COMMIT
returned. After every fault: each acknowledged id is present, no id that was never sent
is, every account moved by exactly the committed ids that touched it, and
`pg_amcheck --all --heapallindexed` finds nothing.

* (a) kill -9 of the frontend at a random moment: the mount dies, PostgreSQL is stopped
  (immediate), the dead mount is cleared with `pbkfs unmount --force`, the same diff is
  mounted again and PostgreSQL recovers;
* (b) kill -9 of one worker, 2-3 times at random moments: the mount stays; PostgreSQL may
  PANIC on an fsync EIO and go through crash recovery by itself;
* (c) kill -9 of every pbkfs process at once, then as (a);
* (d) SIGSTOP of one worker for longer than request_timeout (3 s from a --config file):
  its requests fail with EIO, it is replaced, no server process stays in D state;
* (e) the diff on a 200 MiB tmpfs that fills up: a clear error, the log names the full
  diff, then more space, a remount, and recovery;
* (f) a corrupt page of one table of the backup read over and over beside the load: those
  reads fail with an I/O error, the rest of the load is untouched, the log names backup,
  file and block;
* (g) every pbkfs process, the frontend included, stopped and continued again and again
  (up to a second at a time) beside a CPU hog: slower, never an error, no replacement.

Two more tests reduce what (b) and (d) find to one write each: a write answered by pbkfs
and then lost with its worker must neither read back as the older page nor let an fsync
through a descriptor opened later succeed (RELIABILITY.md, "Fault injection").

The seed is printed (PBKFS_FAULT_SEED repeats a run); each case prints a `FAULT` line with
its figures (RELIABILITY.md, "Fault injection").
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.catalog_edit import copy_catalog
from tests.support.faults import (
    DStateWatch,
    IdLoad,
    Proc,
    Rig,
    Server,
    kill,
    rig,
    seed_from_env,
    still,
    wait_gone,
    wait_until,
    worker_restarts,
)
from tests.support.load import cpu_hog
from tests.support.mounting import is_mounted, pbkfs
from tests.support.postgres import make_owned_dir

pytestmark = pytest.mark.mount

CATALOG = ("pg15", "main", "TP2KC3")  # DELTA, compress none, pgbench -s 1 inside
WORKERS = 2
REQUEST_TIMEOUT = 3.0
D_MARGIN = 10.0  # seconds beyond request_timeout a server process may stay in D
# late_table (1000 rows, 5 blocks), stored uncompressed in TP2KC3 (8 + 8192 bytes a block)
CORRUPT_FILE, CORRUPT_BLOCK = "base/5/16629", 2


@pytest.fixture
def seed() -> int:
    s = seed_from_env()
    print(f"\nfault seed {s} (PBKFS_FAULT_SEED={s} repeats this run)")
    return s


@pytest.fixture
def faults(work: Path) -> Iterator[Rig]:
    with rig(work) as r:
        yield r


def mount_args(catalog: Path) -> dict[str, Any]:
    _, instance, backup_id = CATALOG
    return {"store": catalog, "instance": instance, "backup_id": backup_id, "workers": WORKERS}


def timed_mount_args(fixtures_dir: Path, work: Path, request_timeout: float) -> dict[str, Any]:
    """Mount arguments with `request_timeout` set through a --config file."""
    config = work / "pbkfs.toml"
    config.write_text(f"[mount]\nrequest_timeout = {request_timeout}\n")
    return {**mount_args(fixtures_dir / CATALOG[0] / "catalog"),
            "extra": ["--config", str(config)]}


def report(case: str, t0: float, seed: int, **figures: object) -> None:
    fields = " ".join(f"{k}={v}" for k, v in figures.items())
    print(f"FAULT case={case} seed={seed} {fields} duration_s={time.monotonic() - t0:.1f}")


def mount_is_dead(mnt: Path) -> bool:
    """The mount point answers with an error (ENOTCONN), checked in a bounded child."""
    proc = subprocess.run(["timeout", "10", "stat", str(mnt)], capture_output=True,
                          text=True, check=False)
    return proc.returncode != 0 and "not connected" in proc.stderr


def amcheck_clean(server: Server) -> None:
    proc = server.amcheck()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def start_loaded(faults: Rig, mnt: Path, diff: Path, seed: int, sock: str = "sock",
                 **args: Any) -> tuple[Server, IdLoad]:
    """Mount, start PostgreSQL (crash recovery of the backup), prepare the oracle."""
    faults.mount(mnt, diff, **args)
    server = faults.server(mnt, sock)
    server.start()
    load = IdLoad(server, seed)
    load.prepare()
    return server, load


def remount_and_verify(faults: Rig, mnt: Path, diff: Path, load: IdLoad, sock: str,
                       **args: Any) -> tuple[dict[str, int], float]:
    """Mount the same diff again, start PostgreSQL (its crash recovery), check everything,
    stop and unmount cleanly. The figures and the seconds recovery took."""
    faults.mount(mnt, diff, **args)
    server = faults.server(mnt, sock)
    t = time.monotonic()
    server.start()
    server.wait_serving(60)
    recovery = time.monotonic() - t
    figures = load.verify(server)
    amcheck_clean(server)
    server.stop()
    pbkfs("unmount", "-D", str(mnt), "--timeout", "120", timeout=180)
    assert not is_mounted(mnt)
    return figures, recovery


def crash_then_remount(faults: Rig, mnt: Path, diff: Path, server: Server, load: IdLoad,
                       old: list[Proc], **args: Any) -> dict[str, Any]:
    """After the mount died under load: the dead mount is seen as such, PostgreSQL is
    stopped, `pbkfs unmount --force` clears the mount and leaves no process of it, and a new
    mount of the same diff recovers everything acknowledged."""
    wait_until(lambda: mount_is_dead(mnt), 30, "the mount point reports the dead mount")
    wait_until(lambda: len(load.errors) > 0, 30, "PostgreSQL clients see the failure")
    server.kill_immediate()
    load.stop()
    forced = faults.force_unmount(mnt, diff)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert not is_mounted(mnt)
    assert wait_gone(old, 30), [p for p in old if still(p)]
    figures, recovery = remount_and_verify(faults, mnt, diff, load, "sock2", **args)
    return {**figures, "recovery_s": f"{recovery:.1f}"}


# -- (a) ---------------------------------------------------------------------------------

def test_frontend_kill9_under_load_then_remount(fixtures_dir: Path, work: Path,
                                                faults: Rig, seed: int) -> None:
    t0 = time.monotonic()
    rng = random.Random(seed)
    args = mount_args(fixtures_dir / CATALOG[0] / "catalog")
    mnt, diff = make_owned_dir(work / "mnt"), work / "diff"
    server, load = start_loaded(faults, mnt, diff, seed, **args)
    procs = faults.procs(diff)
    load.start()
    load.wait_acked(200, 60)
    delay = rng.uniform(1.0, 8.0)
    time.sleep(delay)
    at = load.count()
    kill(procs[0])
    figures = crash_then_remount(faults, mnt, diff, server, load, procs, **args)
    report("a-frontend-kill9", t0, seed, kill_after_s=f"{delay:.1f}", acked_at_kill=at,
           **figures)


# -- (b) ---------------------------------------------------------------------------------

def test_worker_kill9_repeatedly_under_load(fixtures_dir: Path, work: Path, faults: Rig,
                                            seed: int) -> None:
    t0 = time.monotonic()
    rng = random.Random(seed)
    args = mount_args(fixtures_dir / CATALOG[0] / "catalog")
    mnt, diff = make_owned_dir(work / "mnt"), work / "diff"
    server, load = start_loaded(faults, mnt, diff, seed, **args)
    victims: list[int] = []
    # the first kill hits the worker of pgbench_accounts (the backup file the load writes
    # most), the others a random worker
    accounts = 1 + os.stat(mnt / "base" / "5" / "16542").st_ino % WORKERS
    with DStateWatch(lambda: server.postmaster_pid) as watch:
        load.start()
        load.wait_acked(200, 60)
        for n in range(rng.randint(2, 3)):
            time.sleep(rng.uniform(1.0, 5.0))
            procs = faults.procs(diff)
            victim = procs[accounts] if n == 0 else rng.choice(procs[1:])
            kill(victim)
            victims.append(victim[0])
            wait_until(lambda v=victim[0]: v not in faults.pids(diff)  # type: ignore[misc]
                       and len(faults.pids(diff)) == 1 + WORKERS, 30,
                       f"a new worker in place of {victim[0]}")
        assert is_mounted(mnt) and not mount_is_dead(mnt)
        server.wait_serving(90)
        after = load.count()
        load.wait_acked(after + 200, 60)  # the load goes on after the last kill
        load.stop()
    restarts = worker_restarts(mnt)
    assert restarts == len(victims), (restarts, victims)
    server.settle()  # a checkpoint may PANIC on a write that failed with a killed worker
    live = load.verify(server)
    amcheck_clean(server)
    log = (diff / "pbkfs.log").read_text(errors="replace")
    for v in victims:  # the status is None when the pipe closed before the exit was seen
        assert re.search(rf"\(pid {v}\) exited with status (-9|None)", log), log[-3000:]
    panics = server.panics()
    server.stop()
    pbkfs("unmount", "-D", str(mnt), "--timeout", "120", timeout=180)
    figures, recovery = remount_and_verify(faults, mnt, diff, load, "sock2", **args)
    assert figures["found"] == live["found"]
    report("b-worker-kill9", t0, seed, kills=len(victims), restarts=restarts, panics=panics,
           worst_d_s=f"{watch.worst:.1f}", acked=live["acked"], found=live["found"],
           in_doubt=live["in_doubt"], client_errors=live["errors"],
           found_after_remount=figures["found"])


# -- (c) ---------------------------------------------------------------------------------

def test_kill9_of_every_pbkfs_process_under_load(fixtures_dir: Path, work: Path,
                                                 faults: Rig, seed: int) -> None:
    t0 = time.monotonic()
    rng = random.Random(seed)
    args = mount_args(fixtures_dir / CATALOG[0] / "catalog")
    mnt, diff = make_owned_dir(work / "mnt"), work / "diff"
    server, load = start_loaded(faults, mnt, diff, seed, **args)
    procs = faults.procs(diff)
    assert len(procs) == 1 + WORKERS
    load.start()
    load.wait_acked(200, 60)
    delay = rng.uniform(1.0, 8.0)
    time.sleep(delay)
    at = load.count()
    for p in procs:  # at once: no worker is restarted in between
        kill(p)
    figures = crash_then_remount(faults, mnt, diff, server, load, procs, **args)
    report("c-kill9-all", t0, seed, kill_after_s=f"{delay:.1f}", acked_at_kill=at, **figures)


# -- (d) ---------------------------------------------------------------------------------

def test_stopped_worker_is_replaced_after_request_timeout(fixtures_dir: Path, work: Path,
                                                          faults: Rig, seed: int) -> None:
    t0 = time.monotonic()
    rng = random.Random(seed)
    args = timed_mount_args(fixtures_dir, work, REQUEST_TIMEOUT)
    mnt, diff = make_owned_dir(work / "mnt"), work / "diff"
    server, load = start_loaded(faults, mnt, diff, seed, **args)
    with DStateWatch(lambda: server.postmaster_pid) as watch:
        load.start()
        load.wait_acked(200, 60)
        time.sleep(rng.uniform(0.5, 3.0))
        stopped = rng.choice(faults.procs(diff)[1:])
        victim = stopped[0]
        errors_before = len(load.errors)
        kill(stopped, signal.SIGSTOP)
        faults.stopped.add(stopped)
        replaced = wait_until(lambda: victim not in faults.pids(diff)
                              and len(faults.pids(diff)) == 1 + WORKERS,
                              REQUEST_TIMEOUT + 30, f"a new worker in place of stopped {victim}")
        assert wait_gone([stopped], 10), f"the stopped worker {victim} was not killed"
        assert is_mounted(mnt) and not mount_is_dead(mnt)
        server.wait_serving(90)
        after = load.count()
        load.wait_acked(after + 200, 60)
        load.stop()
    assert watch.worst < REQUEST_TIMEOUT + D_MARGIN, (
        f"pid {watch.worst_pid} stayed in D for {watch.worst:.1f} s")
    assert replaced >= REQUEST_TIMEOUT - 0.5, f"replaced after {replaced:.1f} s only"
    restarts = worker_restarts(mnt)
    assert restarts == 1, restarts
    log = (diff / "pbkfs.log").read_text(errors="replace")
    waited = re.search(rf"\(pid {victim}\) left a request unanswered for (\d+) s; killing it",
                       log)
    assert waited is not None and int(waited.group(1)) >= REQUEST_TIMEOUT, log[-3000:]
    assert re.search(rf"\(pid {victim}\) exited with status (-9|None)", log), log[-3000:]
    eio = server.log().count("Input/output error")
    client_errors = len(load.errors) - errors_before
    assert eio + client_errors > 0, "nobody saw the stalled requests fail"
    server.settle()  # a checkpoint may PANIC on a write that failed with the stalled worker
    live = load.verify(server)
    amcheck_clean(server)
    panics = server.panics()
    server.stop()
    pbkfs("unmount", "-D", str(mnt), "--timeout", "120", timeout=180)
    figures, _ = remount_and_verify(faults, mnt, diff, load, "sock2", **args)
    report("d-worker-sigstop", t0, seed, request_timeout_s=REQUEST_TIMEOUT,
           replaced_after_s=f"{replaced:.1f}", worst_d_s=f"{watch.worst:.1f}",
           restarts=restarts, panics=panics, pg_eio_lines=eio, client_errors=client_errors,
           acked=live["acked"], found=live["found"], found_after_remount=figures["found"])


# -- (e) ---------------------------------------------------------------------------------

class Filler:
    """Bulk inserts of ~20 MB each until PostgreSQL refuses; counts acknowledged batches."""

    ROWS = 20_000

    def __init__(self, server: Server) -> None:
        self.server = server
        self.batches = 0
        self.error = ""
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with self.server.connect(10) as conn:
                conn.execute("CREATE TABLE filler (batch int, n int, pad text)")
                while True:
                    conn.execute("INSERT INTO filler SELECT %s, g, repeat(md5(%s || g), 30)"
                                 " FROM generate_series(1, %s) g",
                                 (self.batches, str(self.batches), self.ROWS))
                    self.batches += 1
        except psycopg.Error as exc:
            self.error = str(exc).strip()


def test_full_diff_is_a_clear_error_then_recovers(fixtures_dir: Path, work: Path,
                                                  faults: Rig, seed: int) -> None:
    t0 = time.monotonic()
    args = mount_args(fixtures_dir / CATALOG[0] / "catalog")
    small = faults.small_tmpfs(work / "small", "200m")
    mnt, diff = make_owned_dir(work / "mnt"), small / "diff"
    server, load = start_loaded(faults, mnt, diff, seed, **args)
    load.start()
    load.wait_acked(100, 60)
    filler = Filler(server)
    filler.thread.start()
    filler.thread.join(120)
    assert not filler.thread.is_alive(), "PostgreSQL kept inserting into a full diff"
    assert "No space left on device" in filler.error or "terminat" in filler.error, filler.error
    log = diff / "pbkfs.log"
    try:
        wait_until(lambda: f"the diff directory {diff} is full" in log.read_text(errors="replace"),
                   30, "the log line naming the full diff")
    except AssertionError as exc:
        df = subprocess.run(["df", "-k", str(small)], capture_output=True, text=True).stdout
        raise AssertionError(f"{exc}\n{df}\n{log.stat().st_size} bytes of pbkfs.log, its end:\n"
                             f"{log.read_text(errors='replace')[-4000:]}") from None
    time.sleep(1)  # the oracle clients meet the full diff too
    acked_full = load.count()
    pg_log = server.log()
    enospc = [line for line in pg_log.splitlines() if "No space left on device" in line]
    assert enospc, pg_log[-3000:]
    panics = server.panics()
    server.kill_immediate()
    load.stop()
    # more space; a clean unmount (everything the mount holds becomes durable), remount
    subprocess.run(["mount", "-o", "remount,size=2g", str(small)], check=True, timeout=30)
    unmounted = pbkfs("unmount", "-D", str(mnt), "--timeout", "120", timeout=180, check=False)
    assert unmounted.returncode == 0, unmounted.stdout + unmounted.stderr
    figures, recovery = remount_and_verify(faults, mnt, diff, load, "sock2", **args)
    report("e-full-diff", t0, seed, fs="tmpfs 200m", filler_batches=filler.batches,
           acked_when_full=acked_full, panics=panics, recovery_s=f"{recovery:.1f}", **figures,
           pg_error=repr(enospc[0].split(" UTC ", 1)[-1][:140]))


# -- (g) ---------------------------------------------------------------------------------

STARVE_TIMEOUT = 10.0  # request_timeout while starved: far above the longest stop
STARVE_SECONDS = 15.0


def test_starved_processes_are_slow_never_wrong(fixtures_dir: Path, work: Path,
                                                faults: Rig, seed: int) -> None:
    """Every pbkfs process stopped again and again for up to a second at a time (SIGSTOP,
    SIGCONT: a starved host), the frontend included, beside a CPU hog: the load only slows
    down. No worker is mistaken for a hung one and replaced, no client sees an error, the
    server never PANICs, nothing acknowledged is lost, and the remount has it all."""
    t0 = time.monotonic()
    rng = random.Random(seed)
    args = timed_mount_args(fixtures_dir, work, STARVE_TIMEOUT)
    mnt, diff = make_owned_dir(work / "mnt"), work / "diff"
    server, load = start_loaded(faults, mnt, diff, seed, **args)
    procs = faults.procs(diff)
    stops = 0
    with cpu_hog():
        load.start()
        load.wait_acked(100, 60)
        before = load.count()
        end = time.monotonic() + STARVE_SECONDS
        while time.monotonic() < end:
            victims = rng.sample(procs, rng.randint(1, len(procs)))
            for v in victims:
                kill(v, signal.SIGSTOP)
                faults.stopped.add(v)
            time.sleep(rng.uniform(0.05, 1.0))
            for v in victims:
                kill(v, signal.SIGCONT)
                faults.stopped.discard(v)
            stops += len(victims)
            time.sleep(rng.uniform(0.2, 0.6))
        load.wait_acked(load.count() + 100, 60)  # and it goes on afterwards
        load.stop()
    during = load.count() - before
    assert [p for p in procs if not still(p)] == [], "a starved pbkfs process died"
    assert worker_restarts(mnt) == 0
    assert load.errors == [], load.errors[:5]
    assert server.panics() == 0, server.log()[-3000:]
    live = load.verify(server)
    amcheck_clean(server)
    server.stop()
    pbkfs("unmount", "-D", str(mnt), "--timeout", "120", timeout=180)
    figures, _ = remount_and_verify(faults, mnt, diff, load, "sock2", **args)
    assert figures["found"] == live["found"]
    report("g-starved", t0, seed, stops=stops, acked_while_starved=during,
           acked=live["acked"], found=live["found"], found_after_remount=figures["found"])


# -- (f) ---------------------------------------------------------------------------------

def corrupt_copy(fixtures_dir: Path, dest: Path) -> Path:
    """A copy of the catalog with one byte of late_table's block 2 flipped in TP2KC3."""
    catalog = copy_catalog(fixtures_dir / CATALOG[0] / "catalog", dest)
    stored = catalog / "backups" / CATALOG[1] / CATALOG[2] / "database" / CORRUPT_FILE
    data = bytearray(stored.read_bytes())
    assert len(data) == 5 * 8200
    data[CORRUPT_BLOCK * 8200 + 8 + 4000] ^= 0x5A
    stored.write_bytes(bytes(data))
    return catalog


def test_corrupt_backup_page_fails_its_reads_only(fixtures_dir: Path, work: Path,
                                                  faults: Rig, seed: int) -> None:
    t0 = time.monotonic()
    args = mount_args(corrupt_copy(fixtures_dir, work / "catalog"))
    mnt, diff = make_owned_dir(work / "mnt"), work / "diff"
    server, load = start_loaded(faults, mnt, diff, seed, **args)
    reads: list[str] = []
    good_reads = 0
    load.start()
    load.wait_acked(100, 60)
    before = load.count()
    end = time.monotonic() + 10
    with server.connect(10) as conn:
        while time.monotonic() < end:
            try:
                conn.execute("SELECT count(*) FROM late_table").fetchone()
                reads.append("")
            except psycopg.errors.DataCorrupted as exc:
                reads.append(f"DataCorrupted: {exc}")
            except psycopg.Error as exc:
                reads.append(f"{type(exc).__name__}: {exc}")
            # the blocks before the bad one still read
            row = conn.execute("SELECT id FROM late_table WHERE ctid = '(0,1)'").fetchone()
            good_reads += row is not None
            time.sleep(0.05)
    during = load.count() - before
    load.stop()
    assert reads and all(
        f'could not read block {CORRUPT_BLOCK} in file "{CORRUPT_FILE}": Input/output error'
        in r for r in reads), reads[:5]
    assert good_reads == len(reads)
    assert load.errors == [], load.errors[:5]
    assert during > 100, during
    assert server.panics() == 0, server.log()[-3000:]
    live = load.verify(server)
    amcheck_clean_but = server.amcheck("--exclude-relation", "public.late_table")
    assert amcheck_clean_but.returncode == 0, amcheck_clean_but.stdout[-3000:]
    log = (diff / "pbkfs.log").read_text(errors="replace")
    named = [line for line in log.splitlines()
             if CATALOG[2] in line and CORRUPT_FILE in line and f"block {CORRUPT_BLOCK}" in line]
    assert named, log[-3000:]
    server.stop()
    pbkfs("unmount", "-D", str(mnt), "--timeout", "120", timeout=180)
    report("f-corrupt-page", t0, seed, corrupt_reads=len(reads), good_block_reads=good_reads,
           acked_during_reads=during, acked=live["acked"], found=live["found"],
           client_errors=live["errors"], log_line=repr(named[0][-160:]))



# -- the reductions of what (b) finds ---------------------------------------------------------

def lose_a_write(faults: Rig, fixtures_dir: Path, work: Path
                 ) -> tuple[Path, Path, int, bytes]:
    """Mount; write block 0 of pgbench_accounts (a backup file) and let the kernel hand it
    to pbkfs (FUSE flush), keep a backend-like descriptor open, kill -9 the file's worker
    and wait for the new one and its death in the log. (path, diff, open descriptor, page)."""
    mnt, diff = make_owned_dir(work / "mnt"), work / "diff"
    faults.mount(mnt, diff, **mount_args(fixtures_dir / CATALOG[0] / "catalog"))
    path = mnt / "base" / "5" / "16542"
    page = bytes([0x4E]) * 8192
    backend = os.open(path, os.O_RDWR)
    writer = os.open(path, os.O_RDWR)
    os.pwrite(writer, page, 0)
    os.close(writer)  # FUSE flush: the kernel hands the page to pbkfs, which answers
    victim = faults.procs(diff)[1 + os.fstat(backend).st_ino % WORKERS]
    kill(victim)
    wait_until(lambda: victim[0] not in faults.pids(diff)
               and len(faults.pids(diff)) == 1 + WORKERS, 30, "a new worker")
    log = diff / "pbkfs.log"
    wait_until(lambda: f"(pid {victim[0]}) exited with status"
               in log.read_text(errors="replace"), 10, "the worker's death logged")
    return path, diff, backend, page


def read_block0(path: Path) -> bytes | OSError:
    reader = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(reader, 0, 0, os.POSIX_FADV_DONTNEED)  # past the kernel's cache
        return os.pread(reader, 8192, 0)
    except OSError as exc:
        return exc
    finally:
        os.close(reader)


def test_fsync_of_a_descriptor_opened_after_a_worker_died_never_covers_a_lost_write(
        fixtures_dir: Path, work: Path, faults: Rig) -> None:
    """PostgreSQL's checkpointer fsyncs a relation through a descriptor it opens for the
    purpose (it closes every relation file after each checkpoint), not through the one a
    backend wrote with. After the worker holding a written (answered, unsynced) page died,
    that fsync must either succeed with the page as written (the new worker adopted it) or
    fail with EIO (Linux reports a writeback error nobody has seen yet to the next fsync,
    even on a file opened after it): never succeed over a lost page, or the checkpoint
    completes over it and crash recovery starts after the change it held (case (b) once
    saw committed updates of pgbench_accounts undone)."""
    path, _diff, backend, page = lose_a_write(faults, fixtures_dir, work)
    try:
        checkpointer = os.open(path, os.O_RDWR)  # opened after the loss, for the fsync
        try:
            os.fsync(checkpointer)
            failure = None
        except OSError as exc:
            failure = exc
        finally:
            os.close(checkpointer)
        now = read_block0(path)
    finally:
        with contextlib.suppress(OSError):
            os.close(backend)
    if failure is not None:
        assert failure.errno == errno.EIO, failure
    else:
        assert now == page, ("fsync through a descriptor opened after the worker died "
                             "succeeded, but block 0 reads as the backup had it")


def test_block_lost_with_its_worker_is_not_read_back_older(fixtures_dir: Path, work: Path,
                                                           faults: Rig) -> None:
    """Until PostgreSQL reaches an fsync it keeps running: a page it wrote (write answered)
    and evicted from its buffers is read back from the mount. After the worker died, that
    read must give the page as written or fail (an ERROR); the backup's older page instead
    is silently stale data, which PostgreSQL modifies and logs as a full-page image, so even
    crash recovery replays the old row versions (case (b): "duplicate key value violates
    unique constraint pgbench_accounts_pkey" right after the kill, before any fsync)."""
    path, _diff, backend, page = lose_a_write(faults, fixtures_dir, work)
    try:
        now = read_block0(path)
    finally:
        with contextlib.suppress(OSError):
            os.close(backend)
    assert now == page or (isinstance(now, OSError) and now.errno == errno.EIO), (
        "block 0, written and answered before the worker died, now reads "
        + (repr(now) if isinstance(now, OSError) else "as the backup had it (older data)"))
