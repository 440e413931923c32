"""What the logical view shows for each path, and how each file's content is found."""

from __future__ import annotations

from typing import Literal

import msgspec

from pbkfs.catalog.content import FileEntry
from pbkfs.catalog.store import Backup

Kind = Literal["f", "d", "l"]


class ViewEntry(msgspec.Struct, frozen=True):
    """One path of the restored data directory: type, permission bits, logical size."""

    path: str
    kind: Kind
    mode: int
    size: int
    is_datafile: bool = False
    target: str = ""


class StoredCopy(msgspec.Struct, frozen=True):
    """A file as stored in one backup of the chain."""

    backup: Backup
    entry: FileEntry


class DataSource(msgspec.Struct, frozen=True):
    """A datafile: its segment number, length in blocks, and the layers holding pages."""

    segno: int
    n_blocks: int
    layers: tuple[StoredCopy, ...]  # newest first; only copies with stored pages


class PlainSource(msgspec.Struct, frozen=True):
    """A non-data file: exactly one stored copy (or none: empty), per format spec §4.4."""

    copy: StoredCopy | None
    size: int
    error: str | None = None  # metadata corruption found while resolving the copy


class RewrittenSource(msgspec.Struct, frozen=True):
    """A file whose content the view computes (postgresql.auto.conf, as restore rewrites it)."""

    content: bytes
