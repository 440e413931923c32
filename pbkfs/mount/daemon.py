"""Starting a mount in the background and stopping it (`pbkfs mount` / `pbkfs unmount`).

The launcher starts `python -m pbkfs.mount.frontend -` in a new session
(pbkfs.mount.launch) and hands it the options on its stdin; the frontend
answers "OK" once the mount answers, or "ERR <reason>". The launcher then
checks that the mount point really is a pbkfs mount before it returns 0.
Unmounting asks the kernel to unmount (refused while files are open, e.g.
PostgreSQL still running) and then waits until the mount process
has flushed everything and exited; --force kills the mount's own processes
instead when it is busy, hung or already detached (pbkfs.mount.forcestop).
"""

from __future__ import annotations

import errno
import os
import select
import subprocess
import time

import msgspec

from pbkfs.errors import PbkfsError, UsageError
from pbkfs.mount.forcestop import processes_of, stop_hard
from pbkfs.mount.launch import Launch
from pbkfs.mount.mountinfo import is_mounted
from pbkfs.mount.options import MountOptions
from pbkfs.mount.runtime import frontend_alive, read_record, sweep_stale
from pbkfs.mount.walbind import release_submounts
from pbkfs.proc import proc_stat


class MountError(PbkfsError):
    """The mount did not come up; the message is the daemon's own reason."""


def start_background(opts: MountOptions, timeout: float = 300.0,
                     launch: Launch | None = None) -> int:
    """Hand the options to a mount process (started now unless `launch` was started early
    by the command); returns its pid once the mount answers."""
    launch = launch or Launch()
    pid, r = launch.pid, launch.ready_r
    try:
        launch.send(msgspec.json.encode(opts))
    except BrokenPipeError:
        pass  # it died while starting: its pipe's end (below) reports how
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MountError(f"the mount did not answer within {timeout:.0f} s "
                                 f"(pid {pid} still starting; see {opts.diff}/pbkfs.log)")
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            chunk = os.read(r, 4096)
            if not chunk:
                break
            buf += chunk
    finally:
        os.close(r)
    line = buf.decode(errors="replace").strip()
    if line == "OK":
        if not is_mounted(opts.mountpoint):
            raise MountError(f"{opts.mountpoint}: the mount process said OK but nothing is mounted")
        return pid
    if line.startswith("ERR "):
        _reap(pid)
        raise MountError(line[4:])
    status = _reap(pid)
    raise MountError(f"the mount process exited with status {status} before mounting "
                     f"(see {opts.diff}/pbkfs.log)")


def _reap(pid: int, timeout: float = 30.0) -> int | None:
    """Collect our child's exit status (None if it is not our child or still running)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def holders(mnt: str) -> list[str]:
    """`pid (command)` of every process with a file, directory or cwd under `mnt`.

    Reads only /proc links (never the mount itself, which may be hung)."""
    prefix = mnt.rstrip("/") + "/"
    found: list[str] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        links = [f"/proc/{entry}/cwd", f"/proc/{entry}/root"]
        try:
            links += [f"/proc/{entry}/fd/{fd}" for fd in os.listdir(f"/proc/{entry}/fd")]
        except OSError:
            continue
        for link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if target == mnt or target.startswith(prefix):
                try:
                    with open(f"/proc/{entry}/comm") as f:
                        comm = f.read().strip()
                except OSError:
                    comm = "?"
                found.append(f"{entry} ({comm})")
                break
    return found


def unmount(mountpoint: str, timeout: float = 600.0, force: bool = False) -> list[str]:
    """Unmount and wait until the mount process has persisted everything and exited.

    A busy mount (files open, e.g. PostgreSQL running) is refused naming the processes;
    `force` then stops the mount's own processes hard (pbkfs.mount.forcestop) and detaches
    lazily: what was fsynced is in the diff, and the next mount of the diff recovers it.
    A mount the kernel no longer lists (detached lazily) whose process lives on is found
    by its runtime record. Returns what was done besides a clean unmount, one line each."""
    mnt = os.path.abspath(mountpoint)
    rec = read_record(mnt)
    live = rec is not None and frontend_alive(rec)
    sweep_stale()  # the runtime state of dead mounts (this one's too if its process is gone)
    if not is_mounted(mnt):
        if rec is None or not processes_of(rec):
            raise UsageError(f"{mnt} is not mounted")
        if not force:
            raise UsageError(f"{mnt} is no longer mounted (detached), but its mount process "
                             f"{rec.pid} still runs for files open there; --force stops it")
        return stop_hard(rec)
    broken = False
    if not live:  # never stat the mount of a live process: it may hang
        try:
            os.stat(mnt)
        except OSError as exc:
            broken = exc.errno == errno.ENOTCONN  # the mount process is gone
    # pg_wal's bind mount first (busy while PostgreSQL has WAL open, like the mount).
    # A dead mount's is detached lazily; a live one's refuses while WAL files are open.
    err = release_submounts(mnt, lazy=broken)
    busy = bool(err)
    if not err:
        res = subprocess.run(["fusermount3", "-u", mnt], capture_output=True, text=True)
        err = res.stderr.strip() if res.returncode != 0 else ""
        busy = "busy" in err.lower()
    if err:
        if busy:
            if not force:
                who = ", ".join(holders(mnt)) or "unknown processes"
                raise UsageError(f"{mnt} is busy: files are open there by {who} (stop "
                                 "PostgreSQL first, or use --force to stop the mount hard)")
            if rec is not None and processes_of(rec):
                return stop_hard(rec)
            subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True, text=True)
            return [f"detached {mnt} lazily (no mount process of it runs)"]
        if not broken:
            raise UsageError(f"unmounting {mnt} failed: {err}")
    if rec is None or not live:
        return []
    deadline = time.monotonic() + timeout
    while frontend_alive(rec):
        _reap(rec.pid, 0)
        st = proc_stat(rec.pid)
        if st is not None and st.state in ("T", "t"):  # stopped: it cannot finish
            if force:
                return [f"mount process {rec.pid} is stopped"] + stop_hard(rec)
            raise UsageError(f"{mnt} is unmounted, but its mount process {rec.pid} is stopped "
                             "and cannot finish: continue it (kill -CONT), or use --force")
        if time.monotonic() > deadline:
            if force:
                return [f"mount process {rec.pid} did not finish within {timeout:.0f} s"
                        ] + stop_hard(rec)
            raise UsageError(f"mount process {rec.pid} did not finish within {timeout:.0f} s")
        time.sleep(0.05)
    return []
