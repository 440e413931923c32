"""`pbkfs verify`: read every byte of a chain and check everything the format lets us check.

Two passes: the stored files of every member (size as listed, CRC32C as listed,
page-map CRCs), then the whole logical view (every served page decoded and
checked: inline header vs map, exact page length, header sanity, checksums).
Problems are collected, not raised, so one run reports all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pbkfs.catalog.content import FileEntry
from pbkfs.catalog.headermap import read_region
from pbkfs.catalog.pgcontrol import PG_CONTROL, stored_crc_is
from pbkfs.catalog.store import Backup
from pbkfs.errors import CatalogError, CorruptionError, PbkfsError
from pbkfs.storage.location import open_handle
from pbkfs.view.chainview import ChainView
from pbkfs.view.export import iter_content

CHUNK = 1 << 20


@dataclass(frozen=True)
class Problem:
    """One thing wrong: which backup, which file, which block, why."""

    backup_id: str
    path: str
    block: int | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}, block {self.block}" if self.block is not None else self.path
        return f"backup {self.backup_id}: {where}: {self.reason}"


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    stored_files: int = 0
    stored_bytes: int = 0
    logical_files: int = 0
    logical_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def check_stored_file(member: Backup, entry: FileEntry) -> tuple[list[Problem], int]:
    """Size and CRC of one stored file of one backup, and its page-map region if it has one
    (checked for every member: a region newer backups shadow is still part of the backup)."""
    problems, size = _check_stored_bytes(member, entry)
    if entry.is_page_stream and entry.n_headers > 0:
        try:
            read_region(member.page_header_map, entry, member.control.block_size)
        except PbkfsError as exc:
            reason = exc.reason if isinstance(exc, CorruptionError) else str(exc)
            problems.append(Problem(member.id, entry.path, None, reason))
    return problems, size


def _check_stored_bytes(member: Backup, entry: FileEntry) -> tuple[list[Problem], int]:
    path = member.stored_path(entry)
    problems: list[Problem] = []

    def bad(reason: str) -> tuple[list[Problem], int]:
        problems.append(Problem(member.id, entry.path, None, reason))
        return problems, 0

    try:
        handle = open_handle(path)
    except CatalogError as exc:
        return bad(f"stored file {path} cannot be opened: {exc.reason}")
    try:
        size = handle.size
        if size != entry.size:
            return bad(f"stored file is {size} bytes, listed as {entry.size}")
        crc_fn = member.file_crc()
        value, offset, head = 0, 0, b""
        while True:
            chunk = handle.pread(CHUNK, offset)
            if not chunk:
                break
            if offset == 0:
                head = chunk[:512]
            value = crc_fn(chunk, value)
            offset += len(chunk)
    except PbkfsError as exc:  # an object-store read that failed for good
        return bad(str(exc))
    finally:
        handle.close()
    if entry.path == PG_CONTROL and entry.external_dir_num == 0:
        if not stored_crc_is(head, entry.crc):
            problems.append(Problem(member.id, entry.path, None,
                                    f"pg_control CRC does not match the listed {entry.crc}"))
    elif value != entry.crc:
        problems.append(Problem(member.id, entry.path, None,
                                f"file CRC mismatch: listed {entry.crc}, computed {value}"))
    return problems, size


def stored_work(view: ChainView) -> Iterator[tuple[Backup, FileEntry]]:
    for member in view.chain:
        for entry in member.entries:
            if entry.is_regular and entry.size > 0:
                yield member, entry


def check_logical_file(view: ChainView, path: str) -> tuple[list[Problem], int]:
    """Read one file of the view end to end; datafiles block by block, so one bad page is
    reported with its block number and the rest still read."""
    entry = view.entry(path)
    assert entry is not None
    problems: list[Problem] = []
    if entry.is_datafile:
        for block in range(view.block_count(path)):
            try:
                view.read_block(path, block)
            except CorruptionError as exc:
                problems.append(Problem(exc.backup_id or view.backup_id, path,
                                        exc.block if exc.block is not None else block, exc.reason))
            except PbkfsError as exc:
                problems.append(Problem(view.backup_id, path, block, str(exc)))
        return problems, entry.size
    try:
        read = sum(len(c) for c in iter_content(view, entry))
        if read != entry.size:
            problems.append(Problem(view.backup_id, path, None,
                                    f"read {read} bytes, expected {entry.size}"))
    except CorruptionError as exc:
        problems.append(Problem(exc.backup_id or view.backup_id, path, exc.block, exc.reason))
    except PbkfsError as exc:
        problems.append(Problem(view.backup_id, path, None, str(exc)))
    return problems, entry.size


def verify_view(view: ChainView, jobs: int = 1,
                progress: Callable[[int], None] | None = None) -> Report:
    """Run both passes with `jobs` threads; `progress(n)` is told of bytes done."""
    report = Report()
    tick = progress or (lambda n: None)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for problems, nbytes in pool.map(lambda w: check_stored_file(*w), stored_work(view)):
            report.problems += problems
            report.stored_files += 1
            report.stored_bytes += nbytes
            tick(nbytes)
        files = [e.path for e in view.entries() if e.kind == "f"]
        for problems, nbytes in pool.map(lambda p: check_logical_file(view, p), files):
            report.problems += problems
            report.logical_files += 1
            report.logical_bytes += nbytes
            tick(nbytes)
    return report


def total_work(view: ChainView) -> int:
    """Bytes both passes will read, for a progress bar."""
    stored = sum(e.size for _, e in stored_work(view))
    return stored + sum(e.size for e in view.entries() if e.kind == "f")
