"""A busy machine for tests: races that fire only under load are still bugs."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator


def drop_caches() -> None:
    """Write back and drop the kernel's page, dentry and inode caches."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


@contextlib.contextmanager
def cpu_hog() -> Iterator[None]:
    """A busy-looping process per core beside the test, killed at the end of the block."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for h in hogs:
            h.kill()
            h.wait()
