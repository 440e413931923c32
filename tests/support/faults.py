"""Fault injection on real mounts under PostgreSQL load (tests/postgres/test_faults.py).

* `IdLoad`: client threads that commit unique increasing ids (each transaction also adds 1
  to `abalance` of a random row of `pgbench_accounts`, a relation of the backup) and record
  an id only after COMMIT returned; a checkpoint thread fsyncs data files through the mount
  every few seconds. `verify` proves every acknowledged id is there, no id that was never
  sent is, and every account moved by exactly the committed transactions that touched it.
* `DStateWatch`: the longest time any process of a PostgreSQL server stayed in state D.
* `Rig`: everything a fault test starts (servers, mounts, tmpfs, stopped processes), torn
  down whatever happened: servers killed, mounts force-unmounted (lazy detach as the last
  resort), leftover pbkfs processes killed, stopped ones continued, tmpfs unmounted.

Every call that touches a mount is bounded (subprocess timeouts, connect and statement
timeouts), so a fault that hangs the mount fails a test instead of hanging it. Processes
are signalled as (pid, start time) pairs, never by a pid that may have been reused. The
server and pbkfs logs of each test's last run are copied to $PBKFS_FAULT_LOGS
(/tmp/pbkfs-fault-logs) as the evidence of a failure.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from tests.support.mounting import is_mounted, mount, mount_pids, pbkfs
from tests.support.postgres import PG_BIN, PgCluster, free_port, make_owned_dir

# Small shared buffers: backends evict dirty pages of pgbench_accounts (a backup file) all
# the time, so writes and reads reach pbkfs, not only the WAL.
PG_OPTIONS = {"shared_buffers": "4MB", "checkpoint_timeout": "30s", "max_wal_size": "64MB",
              "restart_after_crash": "on"}
ACCOUNTS = 100_000  # pgbench -s 1 in the pg15 fixture
LOGS = Path(os.environ.get("PBKFS_FAULT_LOGS", "/tmp/pbkfs-fault-logs"))


# -- processes ---------------------------------------------------------------------------

def proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) from /proc/PID/stat, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def proc_start(pid: int) -> int | None:
    """The start time of `pid` (clock ticks since boot): with the pid, a process's identity
    (pids are reused, and this machine's pid_max is 32768)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


Proc = tuple[int, int]  # (pid, start time)


def proc(pid: int) -> Proc | None:
    start = proc_start(pid)
    return None if start is None else (pid, start)


def alive(pid: int) -> bool:
    st = proc_state(pid)
    return st is not None and st[0] not in ("Z", "X")


def still(p: Proc) -> bool:
    """The very process `p` still runs (not a later one with its pid)."""
    return proc_start(p[0]) == p[1] and alive(p[0])


def descendants(root: int) -> set[int]:
    """Every live process below `root` (not `root` itself)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_state(int(entry))
            if st is not None and st[0] != "Z":
                children.setdefault(st[1], []).append(int(entry))
    out: set[int] = set()
    todo = [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def wait_gone(procs: list[Proc] | set[Proc], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(still(p) for p in procs):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def kill(p: Proc, sig: int = signal.SIGKILL) -> None:
    """Signal the process `p` if it is still that process."""
    if proc_start(p[0]) == p[1]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p[0], sig)


def of_datadir(datadir: Path) -> set[Proc]:
    """Every PostgreSQL process whose working directory is `datadir` (the server's
    processes live there, also orphans of a killed postmaster)."""
    want = os.path.abspath(datadir)
    out = set()
    for entry in postgres_pids():
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd").removesuffix(" (deleted)")
        except OSError:
            continue
        p = proc(int(entry))
        if cwd == want and p is not None:
            out.add(p)
    return out


def postgres_pids() -> list[str]:
    """/proc entries of every process named postgres."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() == "postgres":
                    found.append(entry)
        except OSError:
            continue
    return found


def wait_until(cond: Callable[[], bool], timeout: float, what: str, step: float = 0.1) -> float:
    """Poll `cond` until true; the seconds it took. Fails naming `what` after `timeout`."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(step)
    return time.monotonic() - t0


# -- PostgreSQL on a mount ---------------------------------------------------------------

def postgres_states() -> str:
    """`pid state wchan cmdline` of every postgres process: who waits where."""
    lines = []
    for entry in postgres_pids():
        try:
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{entry}/wchan") as f:
                wchan = f.read().strip()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        lines.append(f"{entry} {state} {wchan} {cmd}")
    return "\n".join(lines)


class Server:
    """A PgCluster on a mount plus what a fault test needs: the postmaster's pid (a dead
    mount cannot show postmaster.pid), bounded probes, and a stop that always works."""

    def __init__(self, mnt: Path, sockdir: Path) -> None:
        self.pg = PgCluster(mnt, free_port(), make_owned_dir(sockdir, 0o755))
        self.postmaster: Proc | None = None

    def start(self) -> None:
        self._stale_pidfile()
        self.pg.start(PG_OPTIONS)
        with open(self.pg.datadir / "postmaster.pid") as f:
            self.postmaster = proc(int(f.readline()))
        assert self.postmaster is not None, "the postmaster exited at once"

    @property
    def postmaster_pid(self) -> int | None:
        """The postmaster's pid while it runs (for the D-state watch)."""
        pm = self.postmaster
        return pm[0] if pm is not None and still(pm) else None

    def _stale_pidfile(self) -> None:
        """The lock file of a server this test killed is removed when no server process is
        left in the data directory, as an administrator would: PostgreSQL itself takes a
        live process with the recorded pid for a running server, and here that pid may be
        a zombie (this machine's init reaps late) or reused already (pid_max 32768)."""
        pidfile = self.pg.datadir / "postmaster.pid"
        if pidfile.exists() and not of_datadir(self.pg.datadir):
            pidfile.unlink()

    def connect(self, timeout: int = 10) -> psycopg.Connection[Any]:
        return psycopg.connect(**self.pg.conninfo(), autocommit=True, connect_timeout=timeout,
                               options=f"-c statement_timeout={timeout * 6}s")

    def serving(self) -> bool:
        try:
            with self.connect(5) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.Error:
            return False

    def wait_serving(self, timeout: float = 90) -> float:
        try:
            return wait_until(self.serving, timeout, "PostgreSQL serving again", 0.3)
        except AssertionError as exc:  # what the server and its processes did meanwhile
            raise AssertionError(f"{exc}; processes:\n{postgres_states()}\nlog:\n"
                                 f"{self.pg.log_tail(4000)}") from None

    def settle(self, timeout: float = 120) -> float:
        """A CHECKPOINT, then wait until the server serves. A write that failed earlier (a
        stalled request answered EIO) makes the next checkpoint's fsync of that file fail:
        PostgreSQL PANICs and recovers, as it must; this makes that happen now, not in the
        middle of the checks that follow."""
        with contextlib.suppress(psycopg.Error):
            with self.connect(60) as conn:
                conn.execute("CHECKPOINT")
        return self.wait_serving(timeout)

    def log(self) -> str:
        try:
            return self.pg.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def panics(self) -> int:
        return len(re.findall(r"(?m)PANIC: ", self.log()))

    def kill_immediate(self) -> None:
        """Stop the server now, mount alive or not: `pg_ctl -m immediate` (bounded), then
        SIGQUIT and SIGKILL to the postmaster and every process below it."""
        pm = self.postmaster
        if pm is None:
            return
        if still(pm):
            with contextlib.suppress(subprocess.TimeoutExpired, RuntimeError, OSError):
                self.pg.run([PG_BIN / "pg_ctl", "-D", self.pg.datadir, "-m", "immediate", "-w",
                             "-t", "20", "stop"], check=False, timeout=30)
        if still(pm):
            kill(pm, signal.SIGQUIT)
            wait_gone([pm], 5)
        left = self.processes()
        for p in left:
            kill(p)
        wait_gone(left, 30)
        self.postmaster = None

    def processes(self) -> set[Proc]:
        """The postmaster, every process below it, and any server process left in the
        data directory."""
        out = of_datadir(self.pg.datadir)
        pm = self.postmaster
        if pm is not None and still(pm):
            out.add(pm)
            out.update(p for p in map(proc, descendants(pm[0])) if p is not None)
        return out

    def stop(self) -> None:
        """A clean (fast) stop; immediate if that fails."""
        try:
            self.pg.stop("fast")
            self.postmaster = None
        finally:
            self.kill_immediate()

    def amcheck(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """pg_amcheck --all --heapallindexed (amcheck installed where missing)."""
        return self.pg.run([PG_BIN / "pg_amcheck", "-h", self.pg.sockdir, "-p",
                            str(self.pg.port), "-U", "postgres", "--all", "--heapallindexed",
                            "--install-missing", *extra], check=False, timeout=240)


# -- the oracle --------------------------------------------------------------------------

class IdLoad:
    """Clients committing unique ids; an id is acknowledged only once COMMIT returned."""

    def __init__(self, server: Server, seed: int, clients: int = 4, pad: int = 300) -> None:
        self.server = server
        self.seed = seed
        self.clients = clients
        self.pad = pad
        self.lock = threading.Lock()
        self.acked: set[int] = set()
        self.sent: set[int] = set()
        self.errors: list[str] = []
        self.checkpoints = 0
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.next_id = [k + 1 for k in range(clients)]  # per client, survives a restart

    def prepare(self) -> None:
        """The ids table and a copy of every account's balance before the load."""
        with self.server.connect(60) as conn:
            conn.execute("CREATE TABLE fault_ids (id bigint PRIMARY KEY, aid int NOT NULL,"
                         " client int NOT NULL, at timestamptz NOT NULL DEFAULT now(),"
                         " pad text)")
            conn.execute("CREATE TABLE fault_acct0 AS SELECT aid, abalance FROM pgbench_accounts")
            conn.execute("CHECKPOINT")

    def start(self) -> None:
        self.stop_event.clear()
        self.threads = [threading.Thread(target=self._client, args=(k,), daemon=True)
                        for k in range(self.clients)]
        self.threads.append(threading.Thread(target=self._checkpoints, daemon=True))
        for t in self.threads:
            t.start()

    def stop(self, timeout: float = 60) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout)
        hung = [t.name for t in self.threads if t.is_alive()]
        assert not hung, f"load threads still blocked {timeout:.0f} s after stop: {hung}"

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def wait_acked(self, n: int, timeout: float) -> None:
        wait_until(lambda: self.count() >= n, timeout,
                   f"{n} acknowledged commits (have {self.count()}; errors {self.errors[-3:]})")

    def _error(self, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(f"{type(exc).__name__}: {str(exc).strip()[:300]}")

    def _client(self, k: int) -> None:
        rng = random.Random(self.seed * 1000 + k)
        conn: psycopg.Connection[Any] | None = None
        pad = "y" * self.pad
        while not self.stop_event.is_set():
            i = self.next_id[k]
            self.next_id[k] += self.clients  # an id whose COMMIT got no answer stays in doubt
            try:
                if conn is None:
                    conn = self.server.connect(5)
                aid = rng.randint(1, ACCOUNTS)
                with self.lock:
                    self.sent.add(i)
                with conn.transaction():
                    conn.execute("INSERT INTO fault_ids (id, aid, client, pad)"
                                 " VALUES (%s, %s, %s, %s)", (i, aid, k, pad))
                    conn.execute("UPDATE pgbench_accounts SET abalance = abalance + 1"
                                 " WHERE aid = %s", (aid,))
                with self.lock:
                    self.acked.add(i)  # COMMIT returned: PostgreSQL promised it
            except Exception as exc:  # the fault under test: reconnect and go on
                self._error(exc)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
                self.stop_event.wait(0.2)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _checkpoints(self) -> None:
        rng = random.Random(self.seed * 1000 + 999)
        while not self.stop_event.wait(rng.uniform(0.5, 3.0)):
            try:
                with self.server.connect(5) as conn:
                    conn.execute("CHECKPOINT")
                self.checkpoints += 1
            except Exception:  # noqa: S112 - the fault may have taken the server down
                continue

    def explain_accounts(self, server: Server) -> str:
        """Every tuple version (heap only: no index, no visibility map) of the accounts that
        are duplicated or off, with the committed ids that touched each: a failure's
        evidence (an old version alive again is a lost write of its page)."""
        with server.connect(60) as conn:
            for knob in ("indexscan", "indexonlyscan", "bitmapscan"):
                conn.execute(f"SET enable_{knob} = off")
            bad = [r[0] for r in conn.execute(
                "SELECT aid FROM pgbench_accounts GROUP BY aid HAVING count(*) <> 1"
                " UNION SELECT a.aid FROM pgbench_accounts a JOIN fault_acct0 b USING (aid)"
                " LEFT JOIN (SELECT aid, count(*) AS n FROM fault_ids GROUP BY aid) o"
                " USING (aid) WHERE a.abalance <> b.abalance + coalesce(o.n, 0)"
                " ORDER BY 1 LIMIT 20").fetchall()]
            rows = conn.execute(
                "SELECT a.aid, a.ctid, a.xmin, a.xmax, a.abalance, b.abalance,"
                " (SELECT array_agg(id ORDER BY id) FROM fault_ids f WHERE f.aid = a.aid)"
                " FROM pgbench_accounts a JOIN fault_acct0 b USING (aid)"
                " WHERE a.aid = ANY(%s) ORDER BY a.aid, a.ctid", (bad,)).fetchall()
        return "\n".join(f"aid {a} ctid {c} xmin {x} xmax {xm} balance {b} (before {b0})"
                         f" committed ids {ids}" for a, c, x, xm, b, b0, ids in rows)

    def verify(self, server: Server) -> dict[str, int]:
        """Every acknowledged id present, nothing never sent, accounts match the ids."""
        with server.connect(60) as conn:
            found = {r[0] for r in conn.execute("SELECT id FROM fault_ids").fetchall()}
            accounts = conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone()
            off = conn.execute(
                "SELECT count(*) FROM pgbench_accounts a JOIN fault_acct0 b USING (aid)"
                " LEFT JOIN (SELECT aid, count(*) AS n FROM fault_ids GROUP BY aid) o"
                " USING (aid) WHERE a.abalance <> b.abalance + coalesce(o.n, 0)").fetchone()
        with self.lock:
            acked, sent = set(self.acked), set(self.sent)
        missing = sorted(acked - found)
        phantom = sorted(found - sent)
        assert not missing, (f"{len(missing)} acknowledged ids lost (of {len(acked)}), "
                             f"first {missing[:20]}")
        assert not phantom, f"ids that were never sent: {phantom[:20]}"
        assert accounts == (ACCOUNTS,) and off == (0,), (
            f"pgbench_accounts has {accounts[0] if accounts else None} rows (not {ACCOUNTS}),"
            f" {off[0] if off else None} disagree with the committed ids:\n"
            + self.explain_accounts(server))
        return {"acked": len(acked), "found": len(found), "in_doubt": len(sent - acked),
                "in_doubt_committed": len((sent - acked) & found), "errors": len(self.errors),
                "checkpoints": self.checkpoints}


# -- D state -----------------------------------------------------------------------------

class DStateWatch:
    """Samples the processes of a server every 50 ms; `worst` is the longest time one of
    them stayed in state D (uninterruptible: waiting for the mount) without a break."""

    def __init__(self, root: Callable[[], int | None]) -> None:
        self.root = root
        self.worst = 0.0
        self.worst_pid = 0
        self.since: dict[int, float] = {}
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DStateWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(10)

    def _run(self) -> None:
        while not self.stop_event.wait(0.05):
            root = self.root()
            if root is None:
                continue
            now = time.monotonic()
            seen = set()
            for pid in [root, *descendants(root)]:
                st = proc_state(pid)
                if st is not None and st[0] == "D":
                    seen.add(pid)
                    start = self.since.setdefault(pid, now)
                    if now - start > self.worst:
                        self.worst, self.worst_pid = now - start, pid
            self.since = {p: t for p, t in self.since.items() if p in seen}


# -- teardown ----------------------------------------------------------------------------

class Rig:
    """What a fault test started; `close` removes all of it, whatever state it is in."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.servers: list[Server] = []
        self.mounts: list[tuple[Path, Path]] = []
        self.mount_procs: set[Proc] = set()
        self.stopped: set[Proc] = set()
        self.tmpfs: list[Path] = []

    def server(self, mnt: Path, name: str = "sock") -> Server:
        s = Server(mnt, self.work / name)
        self.servers.append(s)
        return s

    def mount(self, mnt: Path, diff: Path, **kwargs: Any) -> list[Proc]:
        """`pbkfs mount` (bounded), remembered for teardown; the mount's processes."""
        self.mounts.append((mnt, diff))
        mount(mnt, diff, **kwargs)
        return self.procs(diff)

    def procs(self, diff: Path) -> list[Proc]:
        """The live mount's frontend, then its workers (from its runtime record)."""
        out = [p for p in map(proc, mount_pids(diff)) if p is not None]
        self.mount_procs.update(out)
        return out

    def pids(self, diff: Path) -> list[int]:
        return [p[0] for p in self.procs(diff)]

    def small_tmpfs(self, path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                        str(path)], check=True, timeout=30)
        self.tmpfs.append(path)
        return path

    def force_unmount(self, mnt: Path, diff: Path) -> subprocess.CompletedProcess[str]:
        """`pbkfs unmount --force` (bounded); fusermount3 -uz and kill -9 if it fails."""
        self.procs(diff)
        try:
            done = pbkfs("unmount", "-D", str(mnt), "--force", "--timeout", "60",
                         timeout=120, check=False)
        except subprocess.TimeoutExpired as exc:
            done = subprocess.CompletedProcess(exc.cmd, -1, "", "timed out")
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True,
                           timeout=30, check=False)
        for p in self.mount_procs:
            kill(p)
        return done

    def keep_logs(self) -> None:
        """Copy the server and pbkfs logs of this test to LOGS/<test> (kept after the
        work directory is gone: the evidence of a failure)."""
        dest = LOGS / os.environ.get("PYTEST_CURRENT_TEST", "test").split(" ")[0].replace(
            "/", "_").replace(":", "_")
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(self.servers):
            with contextlib.suppress(OSError):
                shutil.copy(s.pg.logfile, dest / f"postgres-{i}.log")
        for i, (_, diff) in enumerate(dict.fromkeys(self.mounts)):
            with contextlib.suppress(OSError):
                shutil.copy(diff / "pbkfs.log", dest / f"pbkfs-{i}.log")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.keep_logs()
        for p in self.stopped:
            kill(p, signal.SIGCONT)
        for s in self.servers:
            with contextlib.suppress(Exception):
                s.kill_immediate()
        for mnt, diff in self.mounts:
            with contextlib.suppress(Exception):
                self.procs(diff)
            if is_mounted(mnt) or mount_pids(diff):
                with contextlib.suppress(Exception):
                    self.force_unmount(mnt, diff)
            if is_mounted(mnt):
                subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True,
                               timeout=30, check=False)
        for p in self.mount_procs:
            kill(p)
        wait_gone(self.mount_procs, 30)
        for t in reversed(self.tmpfs):
            subprocess.run(["umount", "-l", str(t)], capture_output=True, timeout=30,
                           check=False)


@contextlib.contextmanager
def rig(work: Path) -> Iterator[Rig]:
    r = Rig(work)
    try:
        yield r
    finally:
        r.close()


def worker_restarts(mnt: Path) -> int:
    """Restarts of every worker, as `pbkfs stat` reports them."""
    out = pbkfs("stat", "-D", str(mnt), "--format", "json", timeout=30).stdout
    import json

    return sum(int(w["restarts"]) for w in json.loads(out)["workers"])


def seed_from_env() -> int:
    """PBKFS_FAULT_SEED, else a fresh one (printed by the tests so a run can be repeated)."""
    value = os.environ.get("PBKFS_FAULT_SEED")
    return int(value) if value else random.SystemRandom().randrange(1 << 31)
