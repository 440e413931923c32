"""One instance's WAL archive `wal/<instance>/`: finding, decoding and checking files.

Fetching a file stats the few names it may be stored under instead of
listing the directory (archives hold many thousands of files), tries them in
order and returns the first whose content proves to be what was asked for.
Nothing here writes anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from pbkfs.catalog.store import Instance
from pbkfs.errors import CatalogError, CorruptionError, PbkfsError, UsageError
from pbkfs.storage.location import Location, file_size, files_with_sizes, location
from pbkfs.storage.objectpath import ObjectPath
from pbkfs.walarchive.decompress import decompress
from pbkfs.walarchive.history import HistoryEntry, parse_history
from pbkfs.walarchive.names import (
    BACKUP_HISTORY,
    HISTORY,
    PARTIAL,
    SEGMENT,
    UNKNOWN,
    WalName,
    classify,
    history_name,
    requested_kind,
)
from pbkfs.walarchive.segment import check_segment, page_magic

SUFFIXES = ("", ".gz", ".lz4", ".zst")
SMALL_FILE_LIMIT = 1 << 20  # history and backup history files are a few hundred bytes


class WalNotFound(CatalogError):
    """The archive holds no copy of the requested file."""


@dataclass(frozen=True)
class ArchivedFile:
    """One stored file of the archive."""

    wal: WalName
    path: Location
    size: int  # bytes on disk (compressed size)


class WalArchive:
    """Read-only access to `wal/<instance>/`."""

    def __init__(
        self,
        directory: str | os.PathLike[str] | Location,
        seg_size: int,
        *,
        xlog_blcksz: int = 8192,
        magic: int | None = None,
        system_identifier: int | None = None,
    ) -> None:
        self.dir: Location = directory if isinstance(directory, (Path, ObjectPath)) \
            else location(directory)
        self.seg_size = seg_size
        self.xlog_blcksz = xlog_blcksz
        self.magic = magic
        self.system_identifier = system_identifier

    @classmethod
    def for_instance(cls, instance: Instance) -> WalArchive:
        """The archive of `instance`, with the checks its configuration and backups allow."""
        config = instance.config
        versions = set()
        blcksz = set()
        for backup in instance.backups.values():
            if backup.readable:
                versions.add(backup.control.server_version)
                blcksz.add(backup.control.xlog_block_size)
        magic = page_magic(versions.pop()) if len(versions) == 1 else None
        return cls(instance.wal_dir, config.xlog_seg_size,
                   xlog_blcksz=blcksz.pop() if len(blcksz) == 1 else 8192,
                   magic=magic, system_identifier=config.system_identifier)

    # -- listing ------------------------------------------------------------------------

    @cached_property
    def files(self) -> list[ArchivedFile]:
        """Every regular file of the archive, classified, sorted by name (empty if no archive)."""
        try:
            found = files_with_sizes(self.dir)
        except OSError as exc:
            raise CatalogError(self.dir, f"cannot list WAL archive: {exc.strerror}") from exc
        out = [ArchivedFile(classify(name, self.seg_size), self.dir / name, size)
               for name, size in found]
        out.sort(key=lambda f: f.wal.name)
        return out

    @cached_property
    def segment_index(self) -> dict[tuple[int, int], list[ArchivedFile]]:
        """(timeline, segno) -> stored copies: full segments first, then partial ones."""
        index: dict[tuple[int, int], list[ArchivedFile]] = {}
        for f in self.files:
            if f.wal.kind == SEGMENT:
                index.setdefault((f.wal.tli, f.wal.segno), []).append(f)
        for f in self.files:
            if f.wal.kind == PARTIAL:
                index.setdefault((f.wal.tli, f.wal.segno), []).append(f)
        return index

    def has_segment(self, tli: int, segno: int, *, partial_ok: bool = True) -> bool:
        copies = self.segment_index.get((tli, segno), [])
        return any(partial_ok or c.wal.kind == SEGMENT for c in copies)

    # -- fetching -----------------------------------------------------------------------

    def candidates(self, name: str) -> list[ArchivedFile]:
        """Stored copies that may hold `name` (a bare segment or history file name), in order."""
        wal = requested_kind(name, self.seg_size)
        if wal.kind == UNKNOWN:
            raise UsageError(f"{name!r} is not a WAL segment, timeline history, partial segment "
                             "or backup history file name")
        if wal.kind == SEGMENT:
            names = [name + s for s in SUFFIXES] + [name + ".partial" + s for s in SUFFIXES]
        elif wal.kind == BACKUP_HISTORY:
            names = [name]
        else:
            names = [name + s for s in SUFFIXES]
        out = []
        for stored in names:
            path = self.dir / stored
            size = file_size(path)
            if size is not None:
                out.append(ArchivedFile(classify(stored, self.seg_size), path, size))
        return out

    def fetch(self, name: str) -> tuple[bytes, ArchivedFile]:
        """The checked content of `name` and the copy it came from.

        WalNotFound when no copy exists; CorruptionError (naming every copy and
        what is wrong with it) when none is valid.
        """
        copies = self.candidates(name)
        if not copies:
            raise WalNotFound(self.dir / name, "not in the WAL archive")
        problems: list[PbkfsError] = []
        for copy in copies:
            try:
                return self.read_checked(copy, name), copy
            except (CorruptionError, CatalogError) as exc:
                problems.append(exc)
        if len(problems) == 1:
            raise problems[0]
        raise CorruptionError(self.dir / name, "no valid copy: " +
                              "; ".join(str(p) for p in problems))

    def read_checked(self, copy: ArchivedFile, name: str | None = None) -> bytes:
        """Decompress one stored copy and check it is the file it is named after."""
        wal = copy.wal
        try:
            raw = copy.path.read_bytes()
        except OSError as exc:
            raise CatalogError(copy.path, f"cannot read: {exc.strerror}") from exc
        if wal.kind in (SEGMENT, PARTIAL):
            data = decompress(raw, wal.compression, self.seg_size, copy.path)
            check_segment(data, path=copy.path, tli=wal.tli, segno=wal.segno,
                          seg_size=self.seg_size, xlog_blcksz=self.xlog_blcksz,
                          magic=self.magic, system_identifier=self.system_identifier)
            return data
        data = decompress(raw, wal.compression, SMALL_FILE_LIMIT, copy.path)
        if wal.kind == HISTORY:
            try:
                parse_history(data.decode("utf-8"), wal.tli, copy.path)
            except UnicodeDecodeError:
                raise CorruptionError(copy.path, "timeline history file is not text") from None
        return data

    def history(self, tli: int) -> list[HistoryEntry] | None:
        """Ancestors of timeline `tli` from its history file; [] for timeline 1, None if absent."""
        if tli == 1:
            return []
        try:
            data, copy = self.fetch(history_name(tli))
        except WalNotFound:
            return None
        return parse_history(data.decode("utf-8"), tli, copy.path)

    def newest_timeline(self) -> int:
        """The highest timeline with a history file or a segment (1 for an empty archive)."""
        tlis = [f.wal.tli for f in self.files if f.wal.kind in (HISTORY, SEGMENT, PARTIAL)]
        return max(tlis, default=1)
