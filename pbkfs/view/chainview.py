"""The logical view of a backup chain: the data directory `pg_probackup restore` would write.

Names, modes and sizes come from the target backup's file list alone (format
spec §4.2). Datafile blocks come from the newest layer holding them, zeros
where none does, never past the target's `n_blocks` (§4.3); every other file
comes from exactly one stored copy (§4.4). Nothing here writes anywhere.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from pbkfs.catalog.chain import resolve_chain
from pbkfs.catalog.content import FileEntry
from pbkfs.catalog.headermap import PageIndex, read_region, scan_inline_headers
from pbkfs.catalog.pgcontrol import PG_CONTROL, system_identifier
from pbkfs.catalog.store import Backup, Store
from pbkfs.config import OPEN_FILES, PAGE_INDEX_MB
from pbkfs.errors import ChainError, CorruptionError, PbkfsError
from pbkfs.storage.location import read_range
from pbkfs.view.cache import FdCache, WeightedLRU
from pbkfs.view.entries import (
    DataSource,
    PlainSource,
    RewrittenSource,
    StoredCopy,
    ViewEntry,
)
from pbkfs.view.pages import read_stored_pages
from pbkfs.view.rewrite import parse_tablespace_map, strip_recovery_settings

log = logging.getLogger(__name__)

HIDDEN_FILES = ("tablespace_map", "database_map")
AUTO_CONF = "postgresql.auto.conf"
RELSEG_BYTES = 1 << 30
DEFAULT_INDEX_CACHE_BYTES = PAGE_INDEX_MB << 20

Source = DataSource | PlainSource | RewrittenSource | None


class ChainView:
    """Read-only, thread-safe view of one backup chain as a data directory."""

    def __init__(self, chain: list[Backup], *, index_cache_bytes: int = DEFAULT_INDEX_CACHE_BYTES,
                 open_files: int = OPEN_FILES) -> None:
        self.chain = chain
        self.target = chain[0]
        self.backup_id = self.target.id
        control = self.target.control
        self.block_size = control.block_size
        self.relseg_size = RELSEG_BYTES // self.block_size
        self.checksums_enabled = control.checksum_version != 0
        self.indexes: WeightedLRU[PageIndex] = WeightedLRU(index_cache_bytes)
        self.fds = FdCache(open_files)
        self._entries: dict[str, ViewEntry] = {}
        self._sources: dict[str, Source] = {}
        self._children: dict[str, list[str]] = {}
        self.tablespaces: dict[str, str] = {}
        self._build()

    # -- construction -------------------------------------------------------------------

    def _build(self) -> None:
        target_entries = self.target.pgdata_entries
        for member in self.chain[1:]:
            member.pgdata_entries  # noqa: B018 - parse (and CRC-check) every member's list now
        self._entries[""] = ViewEntry("", "d", 0o700, 0)
        tsmap = target_entries.get("tablespace_map")
        if tsmap is not None and tsmap.is_regular:
            source = self._plain_source(tsmap)
            if source.copy is not None and source.error is None:
                self.tablespaces = {
                    f"pg_tblspc/{oid}": where
                    for oid, where in parse_tablespace_map(self._read_plain(
                        "tablespace_map", source, 0, source.size)).items()
                }
        tblspc_mode = target_entries["pg_tblspc"].mode & 0o7777 \
            if "pg_tblspc" in target_entries else 0o700
        for path in sorted(target_entries):
            entry = target_entries[path]
            if path in HIDDEN_FILES:
                continue
            self._add(path, entry, tblspc_mode)
        for path in list(self._entries):
            if path:
                self._link_parent(path)
        for names in self._children.values():
            names.sort()

    def _add(self, path: str, entry: FileEntry, tblspc_mode: int) -> None:
        perm = entry.mode & 0o7777
        if entry.is_dir:
            if path in self.tablespaces:
                perm = tblspc_mode  # restore creates the tablespace directory with this mode
            self._entries[path] = ViewEntry(path, "d", perm, 0)
            self._sources[path] = None
        elif entry.is_symlink and (entry.linked or "").startswith("/"):
            # a legacy tablespace link (content.check_link_target admits no other absolute
            # target): shown in place, like every tablespace
            self.tablespaces[path] = entry.linked or ""
            self._entries[path] = ViewEntry(path, "d", tblspc_mode, 0)
            self._sources[path] = None
        elif entry.is_symlink:
            self._entries[path] = ViewEntry(path, "l", perm, len(entry.linked or ""), False,
                                            entry.linked or "")
            self._sources[path] = None
        elif entry.is_page_stream:
            source = self._data_source(entry)
            self._sources[path] = source
            self._entries[path] = ViewEntry(path, "f", perm, source.n_blocks * self.block_size,
                                            True)
        elif path == AUTO_CONF:
            plain = self._plain_source(entry)
            content = b""
            if plain.error is None and plain.copy is not None:
                content = self._read_plain(path, plain, 0, plain.size)
            elif plain.error is not None:
                raise CorruptionError(path, plain.error, backup_id=self.backup_id)
            rewritten = strip_recovery_settings(content)
            self._sources[path] = RewrittenSource(rewritten)
            self._entries[path] = ViewEntry(path, "f", 0o600, len(rewritten))
        else:
            plain = self._plain_source(entry)
            self._sources[path] = plain
            self._entries[path] = ViewEntry(path, "f", perm, plain.size)

    def _link_parent(self, path: str) -> None:
        parent, _, name = path.rpartition("/")
        if parent not in self._entries:
            log.warning("backup %s lists %s without its directory %s; showing it as 0700",
                        self.backup_id, path, parent)
            self._entries[parent] = ViewEntry(parent, "d", 0o700, 0)
            self._sources[parent] = None
            self._link_parent(parent)
        elif self._entries[parent].kind != "d":
            raise CorruptionError(path, f"listed inside {parent!r}, which is not a directory",
                                  backup_id=self.backup_id)
        self._children.setdefault(parent, []).append(name)

    def _data_source(self, entry: FileEntry) -> DataSource:
        n_blocks = entry.n_blocks or 0
        if entry.size == 0:
            return DataSource(entry.segno, 0, ())
        layers: list[StoredCopy] = []
        for member in self.chain:
            e = member.pgdata_entries.get(entry.path)
            if e is None or e.size <= 0:
                continue
            if not e.is_page_stream:
                raise CorruptionError(entry.path, "stored as a plain file in an older backup but "
                                      "as a datafile in the target", backup_id=member.id)
            layers.append(StoredCopy(member, e))
        if entry.n_blocks is None and entry.size > 0:
            raise CorruptionError(entry.path, "datafile listed without n_blocks",
                                  backup_id=self.backup_id)
        return DataSource(entry.segno, n_blocks, tuple(layers))

    def _plain_source(self, entry: FileEntry) -> PlainSource:
        if entry.size == 0:
            return PlainSource(None, 0)
        if entry.size > 0:
            size = entry.full_size if entry.is_cfs and entry.full_size else entry.size
            if entry.compress_alg not in (None, "none") and not entry.is_cfs:
                return PlainSource(None, size, f"non-data file stored with compress_alg "
                                   f"{entry.compress_alg!r}; refusing to guess its encoding")
            return PlainSource(StoredCopy(self.target, entry), entry.size)
        for member in self.chain[1:]:
            e = member.pgdata_entries.get(entry.path)
            if e is None:
                return PlainSource(None, entry.full_size or 0,
                                   f"listed as unchanged but missing from parent {member.id}")
            if e.size == 0:
                return PlainSource(None, 0)
            if e.size > 0:
                if e.compress_alg not in (None, "none"):
                    return PlainSource(None, e.size, f"non-data file stored with compress_alg "
                                       f"{e.compress_alg!r} in {member.id}")
                return PlainSource(StoredCopy(member, e), e.size)
        return PlainSource(None, entry.full_size or 0,
                           "listed as unchanged but no backup of the chain stores it")

    # -- namespace ----------------------------------------------------------------------

    def entries(self) -> Iterator[ViewEntry]:
        """Every path except the root, in byte order of path."""
        for path in sorted(self._entries):
            if path:
                yield self._entries[path]

    def entry(self, path: str) -> ViewEntry | None:
        return self._entries.get(path.strip("/"))

    def listdir(self, path: str) -> list[str]:
        entry = self.entry(path)
        if entry is None or entry.kind != "d":
            raise FileNotFoundError(path)
        return list(self._children.get(path.strip("/"), ()))

    def __len__(self) -> int:
        return len(self._entries)

    # -- content ------------------------------------------------------------------------

    def read(self, path: str, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of a file, short only at its end."""
        path = path.strip("/")
        entry = self._entries.get(path)
        if entry is None:
            raise FileNotFoundError(path)
        if entry.kind != "f":
            raise IsADirectoryError(path)
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        end = min(entry.size, offset + length)
        if offset >= end:
            return b""
        source = self._sources[path]
        if isinstance(source, DataSource):
            return self._read_data(path, offset, end)
        if isinstance(source, RewrittenSource):
            return source.content[offset:end]
        assert isinstance(source, PlainSource)
        return self._read_plain(path, source, offset, end - offset)

    def _read_data(self, path: str, offset: int, end: int) -> bytes:
        bs = self.block_size
        first, last = offset // bs, (end - 1) // bs
        parts = self._read_blocks(path, first, last + 1)
        data = b"".join(parts)
        skip = offset - first * bs
        return data[skip : skip + end - offset]

    def _read_blocks(self, path: str, first: int, stop: int) -> list[bytes]:
        """Blocks first..stop-1 of a datafile, as `read_block` gives them: each from the
        newest layer holding it, else zeros; a run of blocks stored as consecutive records
        of one layer (that no newer layer overrides) is read and decoded in one go."""
        source = self._data(path)
        if not 0 <= first <= stop <= source.n_blocks:
            raise ValueError(f"blocks {first}..{stop - 1} outside {path} "
                             f"({source.n_blocks} blocks)")
        layers = source.layers
        indexes: list[PageIndex] = []  # of layers[:len(indexes)], loaded only when needed
        out: list[bytes] = []
        b = first
        while b < stop:
            depth, record = -1, -1
            for depth, copy in enumerate(layers):
                if depth == len(indexes):
                    indexes.append(self.page_index(copy))
                record = indexes[depth].find(b)
                if record >= 0:
                    break
            if record < 0:
                out.append(bytes(self.block_size))
                b += 1
                continue
            copy, index, newer = layers[depth], indexes[depth], indexes[:depth]
            count = 1
            blocks = index.blocks
            while (b + count < stop and record + count < len(blocks)
                   and blocks[record + count] == b + count
                   and all(i.find(b + count) < 0 for i in newer)):
                count += 1
            out += read_stored_pages(
                copy, index, record, count, fds=self.fds, block_size=self.block_size,
                relseg_size=self.relseg_size, checksums_enabled=self.checksums_enabled)
            b += count
        return out

    def _read_plain(self, path: str, source: PlainSource, offset: int, length: int) -> bytes:
        if source.error is not None:
            raise CorruptionError(path, source.error, backup_id=self.backup_id)
        if source.copy is None:
            return b""
        copy = source.copy
        stored = copy.backup.stored_path(copy.entry)
        with self.fds.open(stored) as handle:
            if handle.size != copy.entry.size:
                raise CorruptionError(path, f"stored copy {stored} is {handle.size} bytes, "
                                      f"listed as {copy.entry.size}", backup_id=copy.backup.id)
            data = handle.pread(min(length, max(0, source.size - offset)), offset)
        return data

    def content_crc(self, path: str
                    ) -> tuple[Callable[[bytes | bytearray | memoryview, int], int], int] | None:
        """(checksum function, value) the whole content of a non-data file must give, as
        listed in its backup's backup_content.control; None when nothing is listed."""
        source = self._sources.get(path.strip("/"))
        if not isinstance(source, PlainSource) or source.copy is None or source.error:
            return None
        entry = source.copy.entry
        if (entry.crc == 0 or entry.size != source.size or entry.path == PG_CONTROL
                or entry.compress_alg not in (None, "", "none")):
            return None
        return source.copy.backup.file_crc(), entry.crc

    def block_count(self, path: str) -> int:
        source = self._sources.get(path.strip("/"))
        return source.n_blocks if isinstance(source, DataSource) else 0

    def _data(self, path: str) -> DataSource:
        source = self._sources.get(path.strip("/"))
        if not isinstance(source, DataSource):
            raise ValueError(f"{path} is not a datafile")
        return source

    def page_index(self, copy: StoredCopy) -> PageIndex:
        """The (cached) page index of a stored page stream."""
        key = (copy.backup.id, copy.entry.path)

        def load() -> PageIndex:
            if copy.entry.n_headers > 0:
                return read_region(copy.backup.page_header_map, copy.entry, self.block_size)
            return scan_inline_headers(copy.backup.stored_path(copy.entry), copy.entry,
                                       self.block_size)

        try:
            return self.indexes.get_or_load(key, load)
        except CorruptionError as exc:
            if exc.backup_id is None:
                exc.backup_id = copy.backup.id
            raise

    def read_block(self, path: str, block: int) -> bytes:
        """Block `block` of a datafile: from the newest layer holding it, else zeros."""
        source = self._data(path)
        if not 0 <= block < source.n_blocks:
            raise ValueError(f"block {block} outside {path} ({source.n_blocks} blocks)")
        return self._read_blocks(path, block, block + 1)[0]

    def block_sources(self, path: str) -> list[str | None]:
        """Per block of a datafile: the id of the backup serving it, None for zeros."""
        source = self._data(path)
        out: list[str | None] = [None] * source.n_blocks
        for copy in reversed(source.layers):  # oldest first, newer layers overwrite
            index = self.page_index(copy)
            for b in index.blocks:
                if b < source.n_blocks:
                    out[b] = copy.backup.id
        return out

    def stored_copy(self, path: str) -> StoredCopy | None:
        """The one stored copy a non-data file is served from (None: empty or computed)."""
        source = self._sources.get(path.strip("/"))
        return source.copy if isinstance(source, PlainSource) else None

    def close(self) -> None:
        self.fds.close()


def read_system_identifier(backup: Backup) -> int | None:
    """system_identifier from the backup's pg_control (the first 8 bytes), if stored."""
    path = backup.database_dir / PG_CONTROL
    try:
        head = read_range(path, 0, 8)
    except (OSError, PbkfsError):
        return None
    return system_identifier(head)


def check_same_system(chain: list[Backup]) -> None:
    """Every member must come from the same cluster (pg_control's system identifier)."""
    want = read_system_identifier(chain[0])
    for member in chain[1:]:
        got = read_system_identifier(member)
        if want is not None and got is not None and got != want:
            raise ChainError(chain[0].id, member.database_dir / PG_CONTROL,
                             f"member {member.id} is from another cluster (system identifier "
                             f"{got}, target has {want})")


def open_view(store: str | os.PathLike[str] | Store, instance: str, backup_id: str, *,
              force: bool = False, **kwargs: int) -> ChainView:
    """Resolve and validate the chain of `backup_id`, then build its view."""
    st = store if isinstance(store, Store) else Store(store)
    chain = resolve_chain(st.instance(instance), backup_id, force=force)
    check_same_system(chain)
    try:
        return ChainView(chain, **kwargs)
    except PbkfsError:
        raise
    except OSError as exc:  # pragma: no cover - surfaced with the path that failed
        raise CorruptionError(Path(exc.filename or "?"), exc.strerror or str(exc)) from exc


_ = stat
