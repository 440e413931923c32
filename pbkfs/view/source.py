"""What a mount serves: a backup chain view, or (for tests and tools) a plain directory.

Both the frontend (names, modes, sizes) and every worker (content) open the
same source from the same `SourceSpec`, each in its own process.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from pbkfs.config import CacheConfig
from pbkfs.errors import UsageError
from pbkfs.view.entries import ViewEntry


class SourceSpec(msgspec.Struct, frozen=True):
    """Where the base content comes from; recorded in the diff's binding."""

    kind: str  # "catalog" or "plain"
    store: str = ""
    instance: str = ""
    backup_id: str = ""
    path: str = ""  # kind == "plain": the directory


class PlainView:
    """A directory tree read as if it were a backup (read-only, thread-safe)."""

    block_size = 8192

    def __init__(self, root: str) -> None:
        if not os.path.isdir(root):
            raise UsageError(f"{root}: not a directory")
        self.root = os.path.abspath(root)
        self.backup_id = "plain"
        self.chain: list[Any] = []
        self._entries: dict[str, ViewEntry] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel
            for name in dirnames + filenames:
                path = f"{rel}/{name}" if rel else name
                st = os.lstat(os.path.join(dirpath, name))
                mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISDIR(st.st_mode):
                    e = ViewEntry(path, "d", mode, 0)
                elif stat.S_ISLNK(st.st_mode):
                    target = os.readlink(os.path.join(dirpath, name))
                    e = ViewEntry(path, "l", mode, 0, target=target)
                elif stat.S_ISREG(st.st_mode):
                    e = ViewEntry(path, "f", mode, st.st_size)
                else:
                    continue
                self._entries[path] = e

    def entries(self) -> Iterator[ViewEntry]:
        for path in sorted(self._entries):
            yield self._entries[path]

    def entry(self, path: str) -> ViewEntry | None:
        if path == "":
            return ViewEntry("", "d", 0o700, 0)
        return self._entries.get(path)

    def read(self, path: str, offset: int, length: int) -> bytes:
        e = self._entries.get(path)
        if e is None or e.kind != "f":
            raise FileNotFoundError(path)
        end = min(e.size, offset + length)
        if offset >= end:
            return b""
        with open(os.path.join(self.root, path), "rb") as f:
            f.seek(offset)
            return f.read(end - offset)

    def close(self) -> None:
        pass


class Source:
    """A view plus the two calls the object store needs."""

    def __init__(self, spec: SourceSpec, view: Any) -> None:
        self.spec = spec
        self.view = view
        self.block_size: int = view.block_size
        # A branch's ancestor diffs (pbkfs.diff.layers.Layers): paths starting with "/"
        # are references to their objects; a backup path never starts with "/".
        self.layers: Any = None

    def entries(self) -> Iterator[Any]:
        return iter(self.view.entries())

    def read(self, path: str, offset: int, length: int) -> bytes:
        if path[:1] == "/" and self.layers is not None:
            return bytes(self.layers.read(path, offset, length, self))
        return bytes(self.view.read(path, offset, length))

    def base_size(self, path: str) -> int:
        if path[:1] == "/" and self.layers is not None:
            return int(self.layers.size(path))
        e = self.view.entry(path)
        if e is None:
            raise FileNotFoundError(path)
        return int(e.size)

    def content_crc(self, path: str) -> tuple[Callable[[bytes, int], int], int] | None:
        """What the backup lists as the CRC of a non-data file's whole content (None:
        nothing, e.g. a plain directory or a layer reference)."""
        if path[:1] == "/":
            return None
        listed = getattr(self.view, "content_crc", None)
        return listed(path) if listed is not None else None

    def is_data_directory(self) -> bool:
        """Does the tree hold a PostgreSQL data directory (PG_VERSION at its root)?"""
        return self.view.entry("PG_VERSION") is not None

    def chain_ids(self) -> list[str]:
        return [b.id for b in getattr(self.view, "chain", [])]

    def close(self) -> None:
        if self.layers is not None:
            self.layers.close()
        self.view.close()


def open_source(spec: SourceSpec, caches: CacheConfig | None = None) -> Source:
    """Open the view a spec names, its caches bounded by `caches` (default: the
    configuration's defaults); raises pbkfs.errors.* with a clear message."""
    if spec.kind == "plain":
        return Source(spec, PlainView(spec.path))
    if spec.kind == "catalog":
        from pbkfs.view import open_view

        caches = caches or CacheConfig()
        return Source(spec, open_view(spec.store, spec.instance, spec.backup_id,
                                      index_cache_bytes=caches.page_index_bytes,
                                      open_files=caches.open_files))
    raise UsageError(f"unknown source kind {spec.kind!r}")
