"""Power loss under the whole stack: PostgreSQL on a pbkfs mount whose diff lives on lazyfs.

The diff directory of the pbkfs mount is on a lazyfs mount (tests/support/lazyfs.py):
file data that was written but not fsynced lives only in the lazyfs process, as in a
machine's page cache, and an fsync makes it durable only after the case's flush time (a
disk's). PostgreSQL 15 runs on the pbkfs mount with its default settings (fsync on).
Clients insert unique, increasing ids and record each one once COMMIT has returned;
pgbench -i and a TPC-B load with a CHECKPOINT run alongside. At a seeded moment
everything dies: PostgreSQL (`pg_ctl stop -m immediate`, or kill -9 of the postmaster and
of every process it started), every pbkfs process (kill -9), and the power (lazyfs drops
every unsynced page, or keeps a seeded random half of them, and dies) -- PostgreSQL and
pbkfs first, or the power first (then pbkfs sees its diff fail before it is killed).
Then lazyfs is mounted again over the same directory, pbkfs mounts the same diff, and
PostgreSQL must start and recover with every acknowledged id present, no id that was
never sent, the TPC-B sums consistent and `pg_amcheck --heapallindexed` clean; kill -9
must also have ended every thread of pbkfs (a survivor would wedge the mount for good).

Run: `.venv/bin/pytest -q -s tests/postgres/test_power_loss.py` (each case prints what
the power loss dropped and when each step happened).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.env import require
from tests.support.lazyfs import LazyFS
from tests.support.mounting import (
    force_unmount,
    is_mounted,
    kill9_mount,
    mount,
    mount_pids,
    unmount,
)
from tests.support.postgres import PG_BIN, PgCluster, free_port, make_owned_dir

pytestmark = pytest.mark.mount
BACKUP = ("pg15", "main", "TP2KC3")
CLIENTS = 3
AMCHECK = Path("/usr/share/postgresql/15/extension/amcheck.control")


@dataclass(frozen=True)
class Case:
    name: str
    moment: str  # "init" (during pgbench -i), "load", "checkpoint", "after-checkpoint"
    kill: str  # how PostgreSQL dies: "immediate" (pg_ctl stop -m immediate) or "kill9"
    keep_seed: int | None  # None: every unsynced page lost; else a seeded random half kept
    power_first: bool  # the power goes before PostgreSQL and pbkfs are killed
    seed: int  # the moment within the phase
    flush_ms: float  # how long an fsync takes to make data durable on lazyfs

    def __str__(self) -> str:
        return self.name


CASES = [
    Case("init-immediate-drop", "init", "immediate", None, False, 1, 0),
    Case("load-kill9-keep", "load", "kill9", 101, False, 2, 2),
    Case("checkpoint-immediate-keep", "checkpoint", "immediate", 202, False, 3, 0),
    Case("after-checkpoint-kill9-drop", "after-checkpoint", "kill9", None, False, 4, 2),
    Case("power-first-init-drop", "init", "kill9", None, True, 7, 10),
    Case("power-first-load-keep", "load", "kill9", 303, True, 5, 10),
    Case("power-first-checkpoint-drop", "checkpoint", "kill9", None, True, 3, 2),
    Case("power-first-after-checkpoint-keep", "after-checkpoint", "kill9", 404, True, 8, 20),
]


# -- the acknowledged-commit oracle ----------------------------------------------------------


class Committer:
    """CLIENTS connections, each inserting ids k, k+CLIENTS, ... one per transaction; an id
    is recorded only after COMMIT returned."""

    def __init__(self, pg: PgCluster) -> None:
        self.pg = pg
        self.acked: list[list[int]] = [[] for _ in range(CLIENTS)]
        self.sent: list[int] = [-1] * CLIENTS  # the newest id each client sent
        self.stop = threading.Event()
        self.fds = [-1] * CLIENTS
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self.run, args=(k,), daemon=True)
                        for k in range(CLIENTS)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def run(self, k: int) -> None:
        try:
            with psycopg.connect(**self.pg.conninfo(), autocommit=True,
                                 connect_timeout=10) as conn:
                self.fds[k] = conn.pgconn.socket
                i = k
                while not self.stop.is_set():
                    self.sent[k] = i
                    conn.execute("INSERT INTO acked (id, pad) VALUES (%s, repeat('a', 300))",
                                 (i,))
                    self.acked[k].append(i)  # COMMIT returned: PostgreSQL promised it
                    i += CLIENTS
        except (psycopg.Error, OSError) as exc:
            self.errors.append(f"client {k}: {type(exc).__name__}: {exc}")

    def count(self) -> int:
        return sum(len(a) for a in self.acked)

    def wait_for(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < n:
            assert time.monotonic() < deadline, f"only {self.count()} commits: {self.errors}"
            assert not self.errors, self.errors
            time.sleep(0.05)

    def finish(self) -> None:
        self.stop.set()
        deadline = time.monotonic() + 60
        for t in self.threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        stuck = [t for t in self.threads if t.is_alive()]
        if stuck:
            frames = sys._current_frames()
            where = "\n".join("".join(traceback.format_stack(frames[t.ident]))
                              for t in stuck if t.ident in frames)
            inodes = []
            for fd in self.fds:
                with contextlib.suppress(OSError):
                    inodes.append(os.readlink(f"/proc/self/fd/{fd}").strip("socket:[]"))
            table = subprocess.run(["ss", "-xpa"], capture_output=True, text=True,
                                   check=False).stdout.splitlines()
            peers = [" ".join(line.split()) for line in table
                     if any(f" {i} " in f" {line} " for i in inodes)]
            procs = subprocess.run(["ps", "-eo", "pid,ppid,stat,wchan:32,cmd"],
                                   capture_output=True, text=True, check=False).stdout
            blocked = [line for line in procs.splitlines() if " D" in line[:20]]
            raise AssertionError(f"{len(stuck)} clients still wait on their server:\n{where}\n"
                                 f"their sockets {inodes}:\n" + "\n".join(peers) +
                                 "\nblocked processes:\n" + "\n".join(blocked))


# -- killing PostgreSQL ------------------------------------------------------------------------


def marked(sockdir: Path) -> list[int]:
    """Live postgres processes of the test's servers: the postmaster writes its log into
    `sockdir` through its stdout, and every process it starts inherits that stdout (the
    environment would not do: PostgreSQL overwrites it with its process titles)."""
    out = []
    prefix = f"{sockdir}{os.sep}"
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() != "postgres":
                        continue
                if os.readlink(f"/proc/{entry}/fd/1").startswith(prefix) and alive(int(entry)):
                    out.append(int(entry))
            except OSError:
                pass
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill9_postgres(sockdir: Path) -> None:
    """kill -9 of the postmaster and every process it started, until none is left (a
    child forked meanwhile is found by the next look)."""
    deadline = time.monotonic() + 30
    while victims := marked(sockdir):
        assert time.monotonic() < deadline, f"postgres processes survive kill -9: {victims}"
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def wedged(pids: list[int]) -> list[str]:
    """Threads that outlive their killed process: the leader is dead (a zombie or gone) but
    a thread has not exited. Each with its kernel stack."""
    out = []
    for pid in pids:
        if alive(pid):
            continue
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                if int(tid) == pid or not alive(int(tid)):
                    continue
                try:
                    with open(f"/proc/{pid}/task/{tid}/stack") as f:
                        stack = " <- ".join(line.split()[-1] for line in f if line.strip())
                except OSError:
                    stack = "?"
                out.append(f"pid {pid} thread {tid}: {stack}")
    return out


def abort_fuse(conn: int) -> None:
    """Abort a FUSE connection (/sys/fs/fuse/connections): what nothing else can end."""
    path = Path(f"/sys/fs/fuse/connections/{conn}/abort")
    with contextlib.suppress(OSError):
        path.write_text("1")


# -- the stack -------------------------------------------------------------------------------


class Stack:
    """lazyfs at work/lazy over work/lazyroot; pbkfs at work/mnt with its diff on lazyfs;
    PostgreSQL on the pbkfs mount. `teardown` leaves nothing running or mounted."""

    def __init__(self, fixtures_dir: Path, work: Path) -> None:
        fixture, instance, backup_id = BACKUP
        self.work = work
        self.args: dict[str, Any] = {"store": fixtures_dir / fixture / "catalog",
                                     "instance": instance, "backup_id": backup_id}
        self.root, self.lazy_mnt = work / "lazyroot", work / "lazy"
        self.mnt = make_owned_dir(work / "mnt", 0o700)
        self.diff = self.lazy_mnt / "diff"
        self.sock = make_owned_dir(work / "sock", 0o755)
        self.lazy: LazyFS | None = None
        self.pg: PgCluster | None = None
        self.t0 = time.monotonic()
        self.notes: list[str] = []
        self.server: subprocess.Popen[bytes] | None = None
        self.conn = -1  # the pbkfs mount's FUSE connection
        self.pbkfs_pids: list[int] = []
        self.hung: str | None = None  # what of pbkfs outlived kill -9, if anything did
        self.bench: subprocess.Popen[str] | None = None

    def up(self, flush_ms: float) -> PgCluster:
        self.lazy = LazyFS(self.root, self.lazy_mnt, self.work / "lazy.sock",
                           self.work / "lazy.log").start()
        self.lazy.command(f"fsync-delay {flush_ms / 1000}")
        self.mount_pbkfs()
        pg = self.pg = PgCluster(self.mnt, free_port(), self.sock)
        # The postmaster runs under a `runuser` of ours, which reaps it when it is killed:
        # started by pg_ctl it would be left a zombie nobody reaps here, whose pid in
        # postmaster.pid then looks alive and keeps the next server from starting.
        with open(pg.logfile, "ab") as log:
            self.server = subprocess.Popen(
                ["runuser", "-u", "postgres", "--", str(PG_BIN / "postgres"), "-D",
                 str(self.mnt), "-p", str(pg.port), "-k", str(self.sock), "-c",
                 "listen_addresses="],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd="/tmp",
                start_new_session=True)
        deadline = time.monotonic() + 120
        while pg.run([PG_BIN / "pg_isready", "-h", self.sock, "-p", str(pg.port)],
                     check=False).returncode != 0:
            assert self.server.poll() is None, f"PostgreSQL exited:\n{pg.log_tail()}"
            assert time.monotonic() < deadline, f"PostgreSQL did not start:\n{pg.log_tail()}"
            time.sleep(0.2)
        return pg

    def mount_pbkfs(self) -> None:
        mount(self.mnt, self.diff, **self.args)
        self.conn = os.minor(os.stat(self.mnt).st_dev)
        self.pbkfs_pids = mount_pids(self.diff)

    def unwedge(self, wait: float) -> list[str]:
        """Threads of killed pbkfs processes still there after `wait` seconds; if any, the
        mount's FUSE connection is aborted so that they, and every process stuck on the
        mount, can end."""
        deadline = time.monotonic() + wait
        while (left := wedged(self.pbkfs_pids)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if left:
            abort_fuse(self.conn)
        return left

    def pgbench(self, args: list[str]) -> subprocess.Popen[str]:
        """pgbench in the background, in its own process group (killed at teardown)."""
        assert self.pg is not None
        self.bench = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "pgbench"), "-h", str(self.sock),
             "-p", str(self.pg.port), "-U", "postgres", *args, "postgres"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd="/tmp",
            start_new_session=True)
        return self.bench

    def kill_postgres(self, how: str) -> None:
        assert self.pg is not None
        if how == "immediate":
            self.pg.run([PG_BIN / "pg_ctl", "-D", self.mnt, "-m", "immediate", "-w", "-t", "60",
                         "stop"], check=False, timeout=90)
        kill9_postgres(self.sock)  # whatever is left (all of it for "kill9")
        if self.server is not None:
            self.server.wait(timeout=60)
            self.server = None

    def power_loss(self, case: Case) -> dict[str, Any]:
        """Everything dies at this moment; the dead mounts are detached."""
        assert self.lazy is not None
        self.note("the moment")
        if case.power_first:
            out = self.lazy.crash(case.keep_seed)
            self.note("power lost")
            self.kill_postgres(case.kill)
            self.note("PostgreSQL killed")
            killed = kill9_mount(self.diff)
            self.note("pbkfs killed")
        else:
            self.kill_postgres(case.kill)
            self.note("PostgreSQL killed")
            killed = kill9_mount(self.diff)
            self.note("pbkfs killed")
            out = self.lazy.crash(case.keep_seed)
            self.note("power lost")
        assert len(killed) >= 2, killed  # the frontend and its workers
        self.pbkfs_pids = sorted(set(self.pbkfs_pids) | set(killed))
        left = self.unwedge(wait=15)
        if left:
            self.hung = (f"{len(left)} thread(s) of pbkfs processes outlived kill -9 and held "
                         f"the mount's FUSE connection open (no process could end; aborted "
                         f"through /sys/fs/fuse/connections/{self.conn}/abort):\n  "
                         + "\n  ".join(left))
        force_unmount(self.mnt, self.diff)  # fusermount3 -uz of the dead pbkfs mount
        self.note("dead mounts detached")
        assert not is_mounted(self.mnt) and not is_mounted(self.lazy_mnt)
        self.stop_bench()
        return out

    def note(self, what: str) -> None:
        self.notes.append(f"{time.monotonic() - self.t0:.1f} s {what}")

    def stop_bench(self) -> str:
        if self.bench is None:
            return ""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.bench.pid, signal.SIGKILL)
        out, _ = self.bench.communicate(timeout=60)
        self.bench = None
        return out

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.stop_bench()
        self.unwedge(wait=0)  # a wedged mount would hang everything below
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.teardown()
        with contextlib.suppress(Exception):
            kill9_postgres(self.sock)
        if self.server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait(timeout=60)
        if is_mounted(self.mnt) or mount_pids(self.diff):
            force_unmount(self.mnt, self.diff)
        self.unwedge(wait=5)
        if self.lazy is not None:
            self.lazy.teardown()


@pytest.fixture
def stack(fixtures_dir: Path, work: Path) -> Any:
    s = Stack(fixtures_dir, work)
    try:
        yield s
    finally:
        s.teardown()


# -- the test --------------------------------------------------------------------------------


def checkpoint_ignoring_the_crash(pg: PgCluster) -> None:
    with contextlib.suppress(Exception):
        pg.psql("CHECKPOINT")


def drive_to_the_moment(stack: Stack, pg: PgCluster, case: Case, committer: Committer) -> bool:
    """Run the workload up to the case's moment; True if the TPC-B phase was reached."""
    rng = random.Random(case.seed)
    committer.start()
    committer.wait_for(20)
    stack.note("clients committing")
    if case.moment == "init":
        stack.pgbench(["-i", "-s", "2", "-q"])
        time.sleep(rng.uniform(0.3, 1.2))
        return False
    pg.pgbench(["-i", "-s", "2", "-q", "postgres"])
    stack.note("pgbench -i done")
    stack.pgbench(["-n", "-c", "4", "-j", "2", "-T", "120"])
    if case.moment == "load":
        time.sleep(rng.uniform(1.0, 4.0))
    elif case.moment == "checkpoint":
        time.sleep(rng.uniform(1.5, 3.0))
        threading.Thread(target=checkpoint_ignoring_the_crash, args=(pg,), daemon=True).start()
        time.sleep(rng.uniform(0.0, 0.4))
    else:  # after-checkpoint
        time.sleep(rng.uniform(1.0, 2.0))
        pg.psql("CHECKPOINT")
        stack.note("CHECKPOINT done")
        time.sleep(rng.uniform(0.5, 3.0))
    assert stack.bench is not None and stack.bench.poll() is None, "pgbench ended early"
    return True


def check_ids(present: set[int], committer: Committer) -> None:
    for k in range(CLIENTS):
        acked = committer.acked[k]
        mine = {i for i in present if i % CLIENTS == k}
        missing = set(acked) - mine
        assert not missing, (f"client {k}: {len(missing)} acknowledged ids lost, "
                             f"e.g. {sorted(missing)[:10]} (last acked {acked[-1]})")
        # besides what was acknowledged, only the one id in flight at the crash may be there
        extra = mine - set(acked)
        assert extra <= {committer.sent[k]}, f"client {k}: ids never acknowledged: {extra}"


def check_tpcb(pg: PgCluster) -> None:
    """Each TPC-B transaction changes one account, teller and branch and adds one history
    row, atomically: after recovery the four sums agree."""
    sums = pg.psql("SELECT (SELECT sum(abalance) FROM pgbench_accounts),"
                   " (SELECT sum(tbalance) FROM pgbench_tellers),"
                   " (SELECT sum(bbalance) FROM pgbench_branches),"
                   " (SELECT coalesce(sum(delta), 0) FROM pgbench_history),"
                   " (SELECT count(*) FROM pgbench_accounts)")
    a, t, b, h, n = (int(x) for x in sums.split("|"))
    assert a == t == b == h, f"TPC-B sums differ: accounts {a} tellers {t} branches {b} " \
                             f"history {h}"
    assert n == 200000, n


def amcheck(pg: PgCluster) -> None:
    proc = pg.run([PG_BIN / "pg_amcheck", "-h", pg.sockdir, "-p", str(pg.port), "-U",
                   "postgres", "--all", "--heapallindexed", "--install-missing"], check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_power_loss_keeps_every_acknowledged_commit(case: Case, stack: Stack) -> None:
    require(AMCHECK.exists(), f"the amcheck extension ({AMCHECK}, postgresql-contrib)")
    t0 = time.monotonic()
    pg = stack.up(case.flush_ms)
    stack.note("lazyfs, pbkfs and PostgreSQL up")
    pg.psql("CREATE TABLE acked (id bigint PRIMARY KEY, pad text)")
    committer = Committer(pg)
    try:
        tpcb = drive_to_the_moment(stack, pg, case, committer)
        before = committer.count()
        lost = stack.power_loss(case)
    finally:
        committer.finish()
    assert committer.count() >= before >= 20
    print(f"\n{case}: crash after {time.monotonic() - t0:.1f} s, {committer.count()} ids "
          f"acknowledged, lazyfs held {lost['pages']} unsynced pages of {lost['files']} "
          f"files: {lost['kept']} kept, {lost['dropped']} dropped, {lost['fsyncs_lost']} fsyncs "
          f"in flight lost\n  " + "\n  ".join(stack.notes))

    # the machine comes back: a fresh lazyfs over the same directory, the same diff
    stack.lazy = LazyFS(stack.root, stack.lazy_mnt, stack.work / "lazy.sock",
                        stack.work / "lazy.log").start()
    stack.mount_pbkfs()
    pg = stack.pg = PgCluster(stack.mnt, free_port(), stack.sock)
    pg.start()
    log = pg.log_tail(200_000)
    assert "automatic recovery in progress" in log and "redo done" in log, log[-3000:]

    present = {int(x) for x in pg.psql("SELECT id FROM acked").split()}
    check_ids(present, committer)
    if tpcb:
        check_tpcb(pg)
    amcheck(pg)
    if not tpcb:  # pgbench -i was cut short: its tables may be missing or empty
        pg.pgbench(["-i", "-s", "1", "-q", "postgres"])
    after = pg.pgbench(["-n", "-c", "2", "-j", "2", "-t", "50", "postgres"]).stdout
    failed = re.search(r"number of failed transactions: (\d+)", after)
    assert failed is not None and int(failed.group(1)) == 0, after
    pg.stop()
    # clean shutdown of both layers: pbkfs syncs everything, lazyfs writes the rest through
    unmount(stack.mnt, stack.diff)
    stack.lazy.unmount()
    print(f"{case}: recovered and checked, {time.monotonic() - t0:.1f} s in all")
    # kill -9 must end pbkfs: a thread that survives it keeps the FUSE connection open, and
    # every process that touches the mount (PostgreSQL's exiting backends) hangs for good
    assert stack.hung is None, stack.hung
