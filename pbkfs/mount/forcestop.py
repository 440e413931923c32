"""Stopping a mount hard (`pbkfs unmount --force`): its frontend and workers, nothing else.

A mount's processes are found from its runtime record and checked before any signal:

* the frontend is the recorded pid only while that process is the one that wrote the
  record (same start time) and runs pbkfs;
* a worker is a process running `python -m workers` for this mount's shared-memory
  segment, a child of the frontend while that lives, else (an orphan) in its session.

Every signal goes through a pidfd opened before the check, so a process that exits in
between is never confused with whoever gets its number next. A background mount's
frontend leads its own session and process group, which then holds exactly the mount:
one killpg stops all of it at once, and no worker is restarted in between. A foreground
frontend shares its caller's group: it is stopped first (no restarts), its workers are
killed, then the frontend. Before any signal, the mount's FUSE connection is aborted (a
thread waiting in the kernel on it survives SIGKILL otherwise). Then the mount is detached
lazily if the kernel still lists it, and its segment, record and control socket are removed.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time

import msgspec

from pbkfs.errors import UsageError
from pbkfs.mount.kerneltune import FUSECTL, abort_connection
from pbkfs.mount.mountinfo import is_mounted
from pbkfs.mount.runtime import RuntimeRecord, frontend_alive, sweep_stale
from pbkfs.mount.walbind import release_submounts, submounts
from pbkfs.proc import cmdline, pids, proc_stat

KILL_WAIT = 30.0  # seconds for SIGKILLed processes to be gone


def frontend_of(rec: RuntimeRecord) -> int | None:
    """The recorded frontend pid if that process is the mount's frontend and still runs."""
    if not frontend_alive(rec):
        return None
    if not any(b"pbkfs" in arg for arg in cmdline(rec.pid)):
        return None
    return rec.pid


def workers_of(rec: RuntimeRecord, parent: int | None) -> list[int]:
    """Live worker processes of the mount: the children of `parent` (its live frontend)
    or, with no parent, those left in the frontend's session."""
    session = rec.sid or rec.pid  # a background frontend leads its session
    found = []
    for pid in pids():
        argv = cmdline(pid)
        if len(argv) < 4 or argv[1:3] != [b"-m", b"workers"]:
            continue
        try:
            spec = msgspec.json.decode(argv[3])
        except msgspec.DecodeError:
            continue
        if not isinstance(spec, dict) or spec.get("shm") != rec.shm:
            continue
        st = proc_stat(pid)
        if st is None:
            continue
        if (st.ppid == parent) if parent is not None else (st.sid == session):
            found.append(pid)
    return found


def processes_of(rec: RuntimeRecord) -> list[int]:
    """The frontend (first, if it runs) and the workers of the mount."""
    front = frontend_of(rec)
    return ([front] if front else []) + workers_of(rec, front)


class _Pinned:
    """pidfds of the processes being stopped: signals reach exactly them, and their exit
    (a zombie included) can be awaited even if nobody reaps them."""

    def __init__(self) -> None:
        self.fds: dict[int, int] = {}

    def pin(self, pid: int) -> int | None:
        if pid in self.fds:
            return self.fds[pid]
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        self.fds[pid] = fd
        return fd

    def kill(self, pid: int, sig: int = signal.SIGKILL) -> bool:
        fd = self.fds.get(pid)
        if fd is None:
            return False
        try:
            signal.pidfd_send_signal(fd, sig)
        except ProcessLookupError:
            return False
        return True

    def wait(self, timeout: float) -> list[int]:
        """Wait until every pinned process has exited; returns those still running."""
        deadline = time.monotonic() + timeout
        left = dict(self.fds)
        while left:
            ms = max(0, int((deadline - time.monotonic()) * 1000))
            poller = select.poll()
            for fd in left.values():
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll(ms):
                left = {p: f for p, f in left.items() if f != fd}
            if time.monotonic() >= deadline:
                break
        return sorted(left)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def stop_hard(rec: RuntimeRecord) -> list[str]:
    """SIGKILL the mount's processes, detach it lazily, remove its runtime state.

    Returns what was done, one line each. UsageError if a process survives or the mount
    cannot be detached."""
    notes: list[str] = []
    pinned = _Pinned()
    try:
        front = frontend_of(rec)
        if front is not None and pinned.pin(front) is not None and frontend_of(rec) == front:
            workers = [w for w in workers_of(rec, front) if pinned.pin(w) is not None]
            workers = [w for w in workers if w in workers_of(rec, front)]  # pinned, rechecked
            # The connection first: a thread stuck in the kernel on it (waiting for
            # writeback only this mount answers) survives SIGKILL and holds /dev/fuse, so
            # the connection would never end. Checked alive and pinned, the frontend still
            # holds the connection: the name in its record is its own.
            if abort_connection(rec.conn):
                notes.append(f"aborted the mount's FUSE connection {FUSECTL}/{rec.conn}")
            if _leads_own_group(front):
                with contextlib.suppress(ProcessLookupError):  # all of the mount at once
                    os.killpg(front, signal.SIGKILL)
                how = f"its process group {front}"
            else:
                pinned.kill(front, signal.SIGSTOP)  # no worker restarted meanwhile
                for w in workers:
                    pinned.kill(w)
                pinned.kill(front)
                how = "each process"
            notes.append(f"stopped mount process {front} and its workers "
                         f"{', '.join(map(str, workers)) or '(none running)'} with SIGKILL "
                         f"({how})")
        # Workers left over, e.g. by a frontend that died before: they keep its session.
        if front is not None:
            pinned.wait(KILL_WAIT)
        orphans = [w for w in workers_of(rec, None) if pinned.pin(w) is not None]
        orphans = [w for w in orphans if w in workers_of(rec, None) and pinned.kill(w)]
        if orphans:
            notes.append(f"stopped workers {', '.join(map(str, orphans))} left by mount "
                         f"process {rec.pid} with SIGKILL")
        alive = pinned.wait(KILL_WAIT)
        if alive:
            raise UsageError(f"processes {', '.join(map(str, alive))} of the mount at "
                             f"{rec.mountpoint} did not exit within {KILL_WAIT:.0f} s of SIGKILL")
    finally:
        pinned.close()
    subs = submounts(rec.mountpoint)
    if subs:
        release_submounts(rec.mountpoint, lazy=True)
        notes.append(f"detached {', '.join(subs)} lazily")
    if is_mounted(rec.mountpoint):
        res = subprocess.run(["fusermount3", "-u", "-z", rec.mountpoint], capture_output=True,
                             text=True, timeout=60, check=False)
        if res.returncode != 0 and is_mounted(rec.mountpoint):
            raise UsageError(f"detaching {rec.mountpoint} failed: {res.stderr.strip()}")
        notes.append(f"detached {rec.mountpoint} lazily")
    notes += sweep_stale(rec.mountpoint)
    return notes


def _leads_own_group(pid: int) -> bool:
    """Does `pid` lead its own session and process group (a background mount)?"""
    with contextlib.suppress(ProcessLookupError):
        return os.getsid(pid) == pid and os.getpgid(pid) == pid
    return False
