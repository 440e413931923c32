"""Locations of catalog bytes, local or in an object store, and the calls on them.

A location is a `pathlib.Path` or an `ObjectPath`; `location()` makes one from a -B
argument. What `pathlib` does not answer the same way for both (listing with sizes,
opening for ranged reads) is here, so callers never branch on the kind themselves.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Protocol

from pbkfs.errors import CatalogError
from pbkfs.fsutil import pread_exact
from pbkfs.storage.objectpath import ObjectPath

Location = Path | ObjectPath
SCHEMES = ("s3://",)


def is_store_url(text: str) -> bool:
    return text.startswith(SCHEMES)


def location(text: str | os.PathLike[str]) -> Location:
    """The location a -B argument (or a recorded store) names."""
    raw = os.fspath(text)
    if is_store_url(raw):
        return ObjectPath.from_url(raw)
    return Path(raw)


def describe(text: str) -> str:
    """The store as recorded and shown: a URL as given, a directory made absolute."""
    return text.rstrip("/") if is_store_url(text) else os.path.abspath(text)


def listdir(loc: Location) -> list[str]:
    """Names directly under `loc`, sorted; OSError as os.listdir raises it."""
    if isinstance(loc, ObjectPath):
        if not loc.is_dir():
            raise FileNotFoundError(2, "No such directory", str(loc))
        return loc.listdir()
    return sorted(os.listdir(loc))


def files_with_sizes(loc: Location) -> list[tuple[str, int]]:
    """(name, size) of the regular files directly under `loc` (symlinks followed);
    [] when `loc` does not exist."""
    if isinstance(loc, ObjectPath):
        listing = loc.store.listing(loc.rel)
        return sorted((n, m.size) for n, m in listing.files.items())
    try:
        entries = list(os.scandir(loc))
    except FileNotFoundError:
        return []
    out = []
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=True)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out.append((entry.name, st.st_size))
    return sorted(out)


def file_size(loc: Location) -> int | None:
    """Size of the regular file at `loc`, None if there is none."""
    if isinstance(loc, ObjectPath):
        meta = loc.meta()
        return None if meta is None else meta.size
    try:
        st = loc.stat()
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


class Handle(Protocol):
    """An open stored file: its size and positioned reads (short only at its end)."""

    size: int

    def pread(self, length: int, offset: int) -> bytes: ...

    def close(self) -> None: ...


class LocalHandle:
    __slots__ = ("fd", "size", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.size = os.fstat(self.fd).st_size

    def pread(self, length: int, offset: int) -> bytes:
        return pread_exact(self.fd, length, offset)

    def close(self) -> None:
        os.close(self.fd)


class ObjectHandle:
    __slots__ = ("path", "meta", "size")

    def __init__(self, path: ObjectPath) -> None:
        meta = path.meta()
        if meta is None:
            raise FileNotFoundError(2, "No such object", str(path))
        self.path = path
        self.meta = meta
        self.size = meta.size

    def pread(self, length: int, offset: int) -> bytes:
        return self.path.store.read(self.path.rel, self.meta, offset, length)

    def close(self) -> None:
        pass


def open_handle(loc: Location) -> Handle:
    """Open a stored file for reading; CatalogError naming it if that fails."""
    try:
        if isinstance(loc, ObjectPath):
            return ObjectHandle(loc)
        return LocalHandle(loc)
    except OSError as exc:
        raise CatalogError(loc, f"cannot open stored file: {exc.strerror}") from exc


def read_range(loc: Location, offset: int, length: int) -> bytes:
    """Bytes [offset, offset+length) of a stored file (fewer only at its end)."""
    handle = open_handle(loc)
    try:
        return handle.pread(length, offset)
    finally:
        handle.close()
