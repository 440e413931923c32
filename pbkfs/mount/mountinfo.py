"""What is mounted where, from /proc/self/mountinfo (never by stat'ing a mount point).

A FUSE mount whose process is stuck hangs every stat of it, so the mount, its
checks and the tools ask the kernel's table instead. Fields are those of
proc(5); paths come back unescaped (the kernel writes space, tab, newline and
backslash as octal escapes) and decoded like any other file name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"
_ESCAPE = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    parent_id: int
    device: str  # major:minor
    root: str
    mountpoint: str
    options: str  # per-mount options (rw, nosuid, ...)
    fstype: str
    source: str
    super_options: str  # per-superblock options (for FUSE: user_id, allow_other, ...)


def _unescape(field: bytes) -> str:
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def parse_line(line: bytes) -> MountEntry:
    fields = line.split()
    sep = fields.index(b"-", 6)
    return MountEntry(
        mount_id=int(fields[0]),
        parent_id=int(fields[1]),
        device=fields[2].decode(),
        root=_unescape(fields[3]),
        mountpoint=_unescape(fields[4]),
        options=fields[5].decode(),
        fstype=_unescape(fields[sep + 1]),
        source=_unescape(fields[sep + 2]) if len(fields) > sep + 2 else "",
        super_options=fields[sep + 3].decode() if len(fields) > sep + 3 else "",
    )


def mounts() -> list[MountEntry]:
    """Every mount this process sees, in the kernel's order (OSError if /proc is missing)."""
    with open(MOUNTINFO, "rb") as f:
        return [parse_line(line) for line in f if line.strip()]


def mounts_at(path: str | os.PathLike[str]) -> list[MountEntry]:
    """The mounts stacked at `path` (absolute, not resolved: resolving would stat it)."""
    want = os.path.abspath(path)
    return [m for m in mounts() if m.mountpoint == want]


def is_mounted(path: str | os.PathLike[str]) -> bool:
    """Is anything mounted at `path`? (os.path.ismount only when /proc cannot be read)"""
    try:
        return bool(mounts_at(path))
    except OSError:
        return os.path.ismount(os.path.abspath(path))
