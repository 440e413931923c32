"""Is a process alive, and which one is it? (Lock files, pid files and runtime records name
processes that may be gone, and their numbers may since belong to someone else.)"""

from __future__ import annotations

import os
from dataclasses import dataclass


def pid_alive(pid: int) -> bool:
    """True when `pid` names a running process (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat that tell a process apart (proc(5))."""

    state: str
    ppid: int
    pgid: int
    sid: int
    start: int  # clock ticks after boot: with the pid, names one process for good


def proc_stat(pid: int) -> ProcStat | None:
    """None when there is no such process (or it is a zombie)."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        st = ProcStat(fields[0], int(fields[1]), int(fields[2]), int(fields[3]),
                      int(fields[19]))
    except (OSError, IndexError, ValueError):
        return None
    return None if st.state in ("Z", "X") else st


def start_time(pid: int) -> int:
    """When `pid` started (clock ticks after boot); 0 if it is not running."""
    st = proc_stat(pid)
    return st.start if st is not None else 0


def cmdline(pid: int) -> list[bytes]:
    """The arguments `pid` was started with ([] if gone, a zombie or a kernel thread)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    if not raw:
        return []
    return raw.split(b"\0")[:-1] if raw.endswith(b"\0") else raw.split(b"\0")


def pids() -> list[int]:
    """Every process this one can see."""
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]
