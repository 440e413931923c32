"""Snapshots of directory trees, to prove that something was not written."""

from __future__ import annotations

import os
from pathlib import Path

Entry = tuple[str, int, int, int]  # path relative to the root, size, mtime_ns, st_mode


def tree_state(root: Path, *, follow_links: bool = False) -> list[Entry] | None:
    """(relative path, size, mtime_ns, mode) of every name below `root`, sorted.

    Equal before and after an operation: nothing below `root` was written, created,
    removed, renamed or chmod-ed. None when `root` does not exist; a single entry
    named "" when `root` is not a directory.

    Symbolic links are recorded as themselves; with `follow_links` the walk goes
    through them and records what they point to (a catalog copy whose backups/ is a
    link to the fixture's).
    """
    look = os.stat if follow_links else os.lstat
    if not os.path.lexists(root):
        return None
    if not os.path.isdir(root) or (os.path.islink(root) and not follow_links):
        st = look(root)
        return [("", st.st_size, st.st_mtime_ns, st.st_mode)]
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_links):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = look(path)
            out.append((os.path.relpath(path, root), st.st_size, st.st_mtime_ns, st.st_mode))
    return sorted(out)


def names_and_sizes(root: Path) -> list[tuple[str, int]]:
    """Names and sizes below root (symlinks as links, never followed); no times, so a live
    mount's own bookkeeping does not count as a change."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            out.append((os.path.relpath(path, root), os.lstat(path).st_size))
    return sorted(out)
