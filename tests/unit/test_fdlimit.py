"""A mount's descriptor budget: the soft limit raised to the hard one, and the object table
sized from it (pbkfs.fdlimit)."""

from __future__ import annotations

import resource
import subprocess
import sys

from pbkfs.fdlimit import (
    MAX_OPEN_OBJECTS,
    MIN_OPEN_OBJECTS,
    RESERVED_FDS,
    open_objects_bound,
)


def test_the_object_table_fits_the_limit() -> None:
    assert open_objects_bound(1024) == (1024 - RESERVED_FDS) // 2
    assert 2 * open_objects_bound(1024) + RESERVED_FDS <= 1024
    assert open_objects_bound(1 << 20) == MAX_OPEN_OBJECTS
    assert open_objects_bound(64) == MIN_OPEN_OBJECTS


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    def lowered() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 2048))

    code = ("import resource; from pbkfs.fdlimit import raise_soft_limit; "
            "print(raise_soft_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))")
    out = subprocess.run([sys.executable, "-c", code], preexec_fn=lowered, check=True,
                         capture_output=True, text=True, timeout=60).stdout.split()
    assert out == ["2048", "2048", "2048"]
