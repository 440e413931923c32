"""Open-file limits: how many descriptors a mount's processes may hold, and using them.

A data directory has thousands of files and PostgreSQL's checkpoint writes to all it
dirtied before it fsyncs any: a worker keeps each such object open (its data file and its
block map) until that fsync. The common default soft limit (1024 descriptors) is far below
that, while the hard limit is usually much higher, so a mount raises its soft limit to the
hard one at start (the workers inherit it) and sizes its object table from what it got.
"""

from __future__ import annotations

import resource

FDS_PER_OBJECT = 2  # an object's data file and its block map
RESERVED_FDS = 256  # pipes, the log, the backup's files, the layers', the cache's ...
MAX_OPEN_OBJECTS = 512  # open objects kept beyond need, at most (each holds two fds)
MIN_OPEN_OBJECTS = 16
CEILING = 1 << 20  # never ask for more than this (an "unlimited" hard limit)


def raise_soft_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one (best effort); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = CEILING if hard == resource.RLIM_INFINITY else min(hard, CEILING)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return CEILING if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        return soft
    return want


def open_objects_bound(soft_limit: int) -> int:
    """How many objects one worker keeps open at most, given its descriptor limit."""
    room = (soft_limit - RESERVED_FDS) // FDS_PER_OBJECT
    return max(MIN_OPEN_OBJECTS, min(MAX_OPEN_OBJECTS, room))
