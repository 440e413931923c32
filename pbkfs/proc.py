"""Is a process alive? (Lock files and pid files name processes that may be gone.)"""

from __future__ import annotations

import os


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
