"""`pbkfs drill`: prove that a backup restores, and leave nothing behind.

A drill mounts the backup on a temporary mount point with a temporary diff (through the
`pbkfs mount` command, as a user would), starts PostgreSQL on it as the server's OS user
on a free port with a private socket directory, waits until it accepts connections and
recovery has ended, runs `pg_amcheck --all --heapallindexed` and each SQL file (its
query must return true in its first column), then stops the server, unmounts and
removes the temporary state, also when a step fails or the drill is interrupted
(SIGINT/SIGTERM turn into an exception that runs the same clean-up).

Unless --keep, the server and its diff are thrown away afterwards, so the server runs
with fsync=off and is stopped in immediate mode: no fsync round trips through the mount
and no shutdown checkpoint writing back the pages pg_amcheck's hint bits dirtied. Recovery
and the checks read exactly what they would read otherwise. With --keep, the server runs
with the backup's settings and stops with a checkpoint, so the kept diff mounts again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

PBKFS = [sys.executable, "-m", "pbkfs.cli.entry"]


class Check(msgspec.Struct):
    name: str
    ok: bool
    seconds: float
    detail: str = ""


class DrillReport(msgspec.Struct):
    store: str
    instance: str
    backup: str = ""
    chain: str = ""
    recovery_end: str = ""
    ok: bool = False
    checks: list[Check] = msgspec.field(default_factory=list)
    failure: str = ""
    kept: str = ""  # --keep: where the diff and the server's log are


class Interrupted(Exception):
    """SIGINT or SIGTERM during a drill: clean up, then exit non-zero."""


@contextmanager
def interrupts_raise() -> Iterator[None]:
    def raise_(signum: int, _frame: Any) -> None:
        raise Interrupted(f"interrupted by {signal.Signals(signum).name}")

    old = {s: signal.signal(s, raise_) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bindir(major: str) -> Path:
    """The server binaries of PostgreSQL `major` (Debian's layout, else pg_config's)."""
    debian = Path(f"/usr/lib/postgresql/{major}/bin")
    if (debian / "postgres").exists():
        return debian
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, timeout=30)
        if out.returncode == 0:
            return Path(out.stdout.strip())
    raise RuntimeError(f"PostgreSQL {major} server binaries not found "
                       f"(looked in {debian} and pg_config)")


def amcheck_args(jobs: int) -> list[str]:
    """What a drill asks of pg_amcheck: every relation of every database, each heap's
    tuples against its indexes. With more than one job, relations are checked on that many
    connections at once: their pages are decoded by several workers while the server
    checks, so the CPUs are used together instead of in turn."""
    return ["--all", "--heapallindexed", "--install-missing", "--jobs", str(max(1, jobs))]


class Drill:
    def __init__(self, store: str, instance: str, backup_id: str | None,
                 recovery_args: list[str], sql_files: list[Path], amcheck: bool,
                 os_user: str, keep: bool, timeout: float, extra_mount_args: list[str],
                 jobs: int = 1) -> None:
        self.store, self.instance, self.backup_id = store, instance, backup_id
        self.recovery_args, self.sql_files, self.amcheck = recovery_args, sql_files, amcheck
        self.user = pwd.getpwnam(os_user)
        self.keep, self.timeout = keep, timeout
        self.extra = extra_mount_args
        self.jobs = max(1, jobs)
        self.report = DrillReport(store=store, instance=instance)
        self.work = Path(tempfile.mkdtemp(prefix="pbkfs-drill-"))
        self.work.chmod(0o755)
        self.mnt, self.diff = self.work / "data", self.work / "diff"
        self.sock = self.work / "sock"
        self.port = free_port()
        self.bindir: Path | None = None
        self.mounted = False
        self.started = False

    # -- steps --------------------------------------------------------------------------

    def _step(self, name: str, fn: Any) -> Any:
        t0 = time.monotonic()
        try:
            out = fn()
        except Exception as exc:
            self.report.checks.append(Check(name, False, round(time.monotonic() - t0, 2),
                                            str(exc)))
            raise
        detail = out if isinstance(out, str) else ""
        self.report.checks.append(Check(name, True, round(time.monotonic() - t0, 2), detail))
        return out

    def _as_user(self, cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runuser", "-u", self.user.pw_name, "--", *cmd],
                              capture_output=True, text=True, timeout=timeout, cwd="/tmp")

    def mount(self) -> str:
        for d, mode in ((self.mnt, 0o700), (self.sock, 0o700)):
            d.mkdir(mode=mode)
            os.chown(d, self.user.pw_uid, self.user.pw_gid)
        args = ["mount", "-B", self.store, "--instance", self.instance, "-D", str(self.mnt),
                "-d", str(self.diff), "--owner", self.user.pw_name, *self.recovery_args,
                *self.extra]
        if self.backup_id:
            args += ["-i", self.backup_id]
        # cwd: the mount's processes (started by that command) are found by it at clean-up
        proc = subprocess.run([*PBKFS, *args], capture_output=True, text=True,
                              timeout=self.timeout, cwd=self.work)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                               else f"pbkfs mount exited {proc.returncode}")
        self.mounted = True
        described = proc.stderr.strip()
        m = re.search(r"backup (\w+) \(", described)
        if m:
            self.report.backup = m.group(1)
        m = re.search(r"chain ([\w <-]+)", described)
        if m:
            self.report.chain = m.group(1).strip()
        version = (self.mnt / "PG_VERSION").read_text().strip()
        self.bindir = pg_bindir(version)
        return described.splitlines()[0] if described else ""

    def start(self) -> str:
        assert self.bindir is not None
        log = self.sock / "postgresql.log"
        opts = (f"-p {self.port} -k {self.sock} -c listen_addresses='' "
                f"-c max_connections={max(20, self.jobs + 10)}")
        if not self.keep:  # a throwaway server (see the module's docstring)
            opts += " -c fsync=off"
        self.started = True  # from here on the clean-up stops a server (also a half-started one)
        proc = self._as_user([str(self.bindir / "pg_ctl"), "-D", str(self.mnt), "-l", str(log),
                              "-o", opts, "-w", "-t", str(int(self.timeout)), "start"],
                             self.timeout + 30)
        if proc.returncode != 0:
            raise RuntimeError("PostgreSQL did not start: " + self.log_tail(log))
        return f"port {self.port}, " + ("fsync on (kept)" if self.keep else
                                         "fsync off (thrown away afterwards)")

    def recovered(self) -> str:
        deadline = time.monotonic() + self.timeout
        while True:
            state = self.sql("SELECT pg_is_in_recovery()")
            if state is False:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"recovery did not end within {self.timeout:.0f} s "
                                   "(a target with --recovery-target-action=pause?)")
            time.sleep(0.2)
        log = self.log_tail(self.sock / "postgresql.log", 200_000)
        m = re.findall(r"redo done at ([0-9A-F]+/[0-9A-F]+)", log)
        self.report.recovery_end = m[-1] if m else str(self.sql("SELECT pg_current_wal_lsn()"))
        return f"recovery ended at {self.report.recovery_end}"

    def run_amcheck(self) -> str:
        assert self.bindir is not None
        proc = self._as_user([str(self.bindir / "pg_amcheck"), *amcheck_args(self.jobs),
                              "-h", str(self.sock), "-p", str(self.port), "-U", "postgres"],
                             self.timeout * 10)
        if proc.returncode != 0:
            raise RuntimeError("pg_amcheck: " + (proc.stdout + proc.stderr).strip()[-2000:])
        return "no corruption found"

    def run_sql(self, path: Path) -> str:
        value = self.sql(path.read_text())
        if value is not True:
            raise RuntimeError(f"{path}: returned {value!r}, not true")
        return "true"

    def sql(self, text: str) -> Any:
        import psycopg

        with psycopg.connect(host=str(self.sock), port=self.port, user="postgres",
                             dbname="postgres", autocommit=True, connect_timeout=10) as conn:
            row = conn.execute(text.encode()).fetchone()  # type: ignore[call-overload]
            return row[0] if row else None

    @staticmethod
    def log_tail(path: Path, chars: int = 2000) -> str:
        try:
            return path.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return "(no server log)"

    # -- clean-up -----------------------------------------------------------------------

    def stop(self) -> None:
        if not self.started or self.bindir is None:
            return
        mode = "fast" if self.keep else "immediate"
        proc = self._as_user([str(self.bindir / "pg_ctl"), "-D", str(self.mnt), "-m", mode,
                              "-w", "-t", "60", "stop"], 90)
        if proc.returncode != 0:
            self._as_user([str(self.bindir / "pg_ctl"), "-D", str(self.mnt), "-m",
                           "immediate", "-w", "-t", "30", "stop"], 60)
        from pbkfs.mount.listing import postgres_pids_in

        for pid in postgres_pids_in(str(self.mnt)):  # a server pg_ctl could not stop
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.started = False

    def unmount(self) -> None:
        if not self.mounted:
            return
        proc = subprocess.run([*PBKFS, "unmount", "-D", str(self.mnt)], capture_output=True,
                              text=True, timeout=600)
        if proc.returncode != 0:
            subprocess.run([*PBKFS, "unmount", "-D", str(self.mnt), "--force"],
                           capture_output=True, text=True, timeout=600)
        self.mounted = False

    def _diff_locked(self) -> bool:
        """Does a live process (a mount process, maybe still starting) hold the diff?"""
        try:
            fd = os.open(self.diff / "lock", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def _mount_processes(self) -> list[int]:
        """Processes started by the drill's `pbkfs mount` (their working directory is the
        drill's): a mount process, maybe still starting, and its workers."""
        from pbkfs.proc import pids

        out = []
        for pid in pids():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/cwd") == str(self.work):
                    out.append(pid)
        return out

    def settle_mount(self) -> None:
        """An interrupted `pbkfs mount` may leave its mount process starting: wait until the
        mount point is unmounted and no process of that mount is left (killed after the
        timeout: what is left then never mounted)."""
        from pbkfs.mount.mountinfo import is_mounted

        deadline = time.monotonic() + min(self.timeout, 120)
        while True:
            if is_mounted(str(self.mnt)):
                self.mounted = True
                self.unmount()
                continue
            left = self._mount_processes()
            if not left and not self._diff_locked():
                return
            if time.monotonic() > deadline:
                for pid in left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                if is_mounted(str(self.mnt)):
                    subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)],
                                   capture_output=True, timeout=60)
                return
            time.sleep(0.1)

    def clean(self) -> None:
        """Stop, unmount, remove: each step tried even when the one before failed."""
        for step in (self.stop, self.unmount, self.settle_mount):
            try:
                step()
            except Exception as exc:  # keep going: leave nothing behind
                self.report.failure = self.report.failure or f"clean-up: {exc}"
        if self.keep:
            self.report.kept = str(self.work)
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    def corrupt_files(self) -> str:
        """Lines of the mount's log that name damaged backup files."""
        try:
            text = (self.diff / "pbkfs.log").read_text(errors="replace")
        except OSError:
            return ""
        lines = [ln for ln in text.splitlines() if " ERROR " in ln]
        return "\n".join(lines[-5:])

    def run(self) -> DrillReport:
        with interrupts_raise():
            try:
                self._step("mount", self.mount)
                self._step("start", self.start)
                self._step("recovery", self.recovered)
                if self.amcheck:
                    self._step("amcheck", self.run_amcheck)
                for path in self.sql_files:
                    self._step(f"sql {path}", lambda p=path: self.run_sql(p))
                self.report.ok = True
            except (Exception, Interrupted) as exc:
                self.report.failure = str(exc)
                damaged = self.corrupt_files()
                if damaged:
                    self.report.failure += "\n" + damaged
            finally:
                for s in (signal.SIGINT, signal.SIGTERM):  # clean-up is not interrupted
                    signal.signal(s, signal.SIG_IGN)
                self.clean()
        return self.report
