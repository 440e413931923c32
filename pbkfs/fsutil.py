"""File-system primitives every layer shares: a directory fsync and a full pread.

Used by the WAL archive (delivery), the view (page reads), the diff (objects,
journal, binding, markers), the mount (cleanup) and tools/mkbackup; so it sits
at the root, beside errors.py, with no imports of its own.
"""

from __future__ import annotations

import os


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the names in directory `path` durable (after a create, rename or unlink)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pread_exact(fd: int, length: int, offset: int) -> bytes:
    """pread that loops over short reads; returns fewer bytes only at end of file."""
    if length <= 0:
        return b""
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    chunks = [data]
    got = len(data)
    while got < length:
        chunk = os.pread(fd, length - got, offset + got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
