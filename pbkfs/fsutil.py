"""File-system primitives every layer shares: a directory fsync, full reads and writes,
and the one mapping between a file name's bytes and the `str` pbkfs keeps of it.

Used by the WAL archive (delivery), the view (page reads), the diff (objects,
journal, binding, markers), the mount (cleanup; names in the FUSE adapter),
the worker process and tools/mkbackup; so it sits at the root, beside
errors.py, with no imports of its own.
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


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """os.write until every byte is written (one write may take fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """os.pwrite of all of `data` at `offset` (one pwrite may take fewer)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def name_str(raw: bytes) -> str:
    """A file name (or path) as pbkfs keeps it: UTF-8, any byte that is not UTF-8 as a
    lone surrogate (surrogateescape, as os.fsdecode on a UTF-8 system, whatever the locale)."""
    return raw.decode("utf-8", "surrogateescape")


def name_bytes(name: str) -> bytes:
    """The bytes of a name from `name_str`, exactly as they were."""
    return name.encode("utf-8", "surrogateescape")
