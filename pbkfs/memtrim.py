"""Give freed heap memory back to the system now and then (glibc's malloc_trim).

pbkfs processes move data in buffers of up to a few MiB (a read of 1 MiB from a worker,
a frame of writes). glibc serves such buffers from the heap once its dynamic mmap
threshold has grown past their size, and memory freed in the middle of the heap stays
resident: after a pgbench run the mount's processes held 130-150 MB, of which about half
was free heap (BENCHMARKS.md, "Memory"). A fixed low mmap threshold returns it too, but
makes every large buffer an mmap/munmap pair with fresh page faults (the first scan of a
table ran about 20 % slower). Trimming a few times a second while the process is busy
keeps the fast path and returns what is free.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable

_trim: Callable[[int], int] | None = None
try:  # glibc's soname first: find_library may run ldconfig (a process per start-up)
    _libc = ctypes.CDLL("libc.so.6", use_errno=True)
    _trim = _libc.malloc_trim
    _trim.argtypes = [ctypes.c_size_t]
    _trim.restype = ctypes.c_int
except (OSError, AttributeError):  # not glibc: nothing to do
    _trim = None

PERIOD = 2.0  # seconds between trims of a busy process


def trim() -> None:
    """Release free heap pages now (a no-op without glibc)."""
    if _trim is not None:
        _trim(0)


def start_trimmer(busy: Callable[[], int], period: float = PERIOD) -> threading.Thread:
    """A daemon thread trimming every `period` seconds while `busy()` (a counter of work
    done) has moved since the last trim; an idle process is trimmed once, then left."""

    def run() -> None:
        seen = busy()
        while True:
            time.sleep(period)
            now = busy()
            if now != seen:
                seen = now
                trim()

    t = threading.Thread(target=run, name="pbkfs-malloc-trim", daemon=True)
    t.start()
    return t
