"""Mounts that end by themselves: `--idle-timeout` and `--ttl`.

A mount is idle while the kernel sends it no request and no file is open on it; after
`idle_timeout` seconds of that, or `ttl` seconds after it started whatever happens, the
mount process unmounts itself as `pbkfs unmount` would. A busy mount (files open, e.g.
PostgreSQL running) is not stopped unless the mount was made with `--force`: then it is
detached lazily, as `pbkfs unmount --force` does (what was fsynced is kept). Every decision
is logged. Durations are written like 90, 90s, 15m, 2h or 1d.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable

import trio

from pbkfs.errors import UsageError
from pbkfs.mount.walbind import release_submounts

CHECK_EVERY = 0.5  # seconds between two looks at the mount's activity
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, option: str) -> float:
    """Seconds of a duration like 90, 90s, 15m, 2h, 1d (UsageError naming `option`)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    if m is None or float(m.group(1)) <= 0:
        raise UsageError(f"{option} {text!r}: expected a positive duration like 90s, 15m, 2h "
                         "or 1d")
    return float(m.group(1)) * UNITS[m.group(2)]


class Activity:
    """What the expiry watches: a counter of requests and the number of open files."""

    def __init__(self, requests: Callable[[], int], open_files: Callable[[], int]) -> None:
        self.requests = requests
        self.open_files = open_files


async def watch(mnt: str, idle_timeout: float, ttl: float, force: bool, activity: Activity,
                log: Callable[[str], None], expired: Callable[[str], None]) -> None:
    """Unmount `mnt` once idle for `idle_timeout` s or `ttl` s after the start (0 = never)."""
    started = last_change = time.monotonic()
    last_count = activity.requests()
    refused_logged = ""
    while True:
        await trio.sleep(CHECK_EVERY)
        now = time.monotonic()
        count, open_files = activity.requests(), activity.open_files()
        if count != last_count or open_files:
            last_count, last_change = count, now
        reason = ""
        if ttl and now - started >= ttl:
            reason = f"its --ttl of {ttl:g} s has passed"
        elif idle_timeout and now - last_change >= idle_timeout:
            reason = f"it was idle for {idle_timeout:g} s (--idle-timeout)"
        if not reason:
            continue
        if open_files and not force:
            if refused_logged != reason:
                log(f"expiry: {reason}, but {open_files} files are open (PostgreSQL running?) "
                    "and the mount was not made with --force: still serving")
                refused_logged = reason
            continue
        log(f"expiry: {reason}: unmounting {mnt}"
            + (f" although {open_files} files are open (--force)" if open_files else ""))
        expired(reason)
        ok = await trio.to_thread.run_sync(_unmount, mnt, bool(open_files))
        if ok:
            return
        log(f"expiry: unmounting {mnt} was refused; trying again")
        await trio.sleep(5)


def _unmount(mnt: str, lazy: bool) -> bool:
    """Ask the kernel to unmount (lazily when forced while busy); the mount loop then ends."""
    busy = release_submounts(mnt, lazy=lazy)
    if busy and not lazy:
        return False
    cmd = ["fusermount3", "-u", "-z", mnt] if lazy else ["fusermount3", "-u", mnt]
    return subprocess.run(cmd, capture_output=True, text=True).returncode == 0
