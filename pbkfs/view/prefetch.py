"""What a mount of an object-store catalog fetches ahead of PostgreSQL.

PostgreSQL's start reads pg_control and the rest of global/; a backend that connects to a
database reads that database's relation map (`pg_filenode.map`) first and then its system
catalogs (relfilenodes below 16384), through the page index of every backup that holds
pages of them. Fetched one read at a time that is one round trip after another; fetched in
parallel ahead of the reads, they are in the host's cache before PostgreSQL asks.

So the plan has two parts: global/ whole, fetched when the mount starts, and per database
directory the main forks of its system catalogs, fetched when its `pg_filenode.map` is
first read (a backend connecting to it): a database nobody connects to (template0) is
never fetched. Each file comes with its region of the page
index (page_header_map), not the whole index (which grows with the backup). WAL is not
fetched here: the first mount copies the backup's pg_wal into the diff.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from pbkfs.storage.location import Location, open_handle
from pbkfs.view.chainview import ChainView

FIRST_USER_OID = 16384
# A main fork (no _fsm/_vm/_init, no .N) in a database directory: base/<db> or a
# tablespace's pg_tblspc/<ts>/<version dir>/<db>.
SYSTEM_CATALOG = re.compile(r"(base/\d+|pg_tblspc/\d+/[^/]+/\d+)/(\d+)")
RELATION_MAP = "pg_filenode.map"
THREADS = 8


class Fetch(NamedTuple):
    """A stored object, or `length` bytes of it from `offset` (length -1: all of it)."""

    location: Location
    offset: int = 0
    length: int = -1

    def __str__(self) -> str:
        return str(self.location) if self.length < 0 else (
            f"{self.location}[{self.offset}+{self.length}]")


class StartupPlan(NamedTuple):
    """global/ (fetched at mount) and, per database directory, its system catalogs
    (fetched when a backend first reads that directory's relation map)."""

    common: list[Fetch]
    databases: dict[str, list[Fetch]]


def startup_plan(view: ChainView) -> StartupPlan:
    """The stored copies of global/ and of every database's system catalogs in every chain
    member (of files the target backup still has), each preceded by its region of that
    member's page index."""
    common: list[Fetch] = []
    databases: dict[str, list[Fetch]] = {}
    present = view.target.pgdata_entries  # what the restored tree holds
    for member in view.chain:
        for entry in member.pgdata_entries.values():
            if entry.is_dir or entry.is_symlink or entry.size <= 0 or entry.path not in present:
                continue
            if entry.path.startswith("global/"):
                out = common
            else:
                m = SYSTEM_CATALOG.fullmatch(entry.path)
                if m is None or int(m.group(2)) >= FIRST_USER_OID:
                    continue
                out = databases.setdefault(m.group(1), [])
            if entry.n_headers > 0 and entry.hdr_size > 0:
                out.append(Fetch(member.page_header_map, entry.hdr_off, entry.hdr_size))
            out.append(Fetch(member.stored_path(entry)))
    return StartupPlan(common, databases)


def fetch_all(objects: list[Fetch], log: Callable[[str], None],
              threads: int = THREADS, what: str = "PostgreSQL's start") -> None:
    """Read every object or range (into the host's cache), in parallel, in the
    background; a failure is only logged (the read PostgreSQL makes later fetches again)."""

    def one(item: Fetch) -> int:
        try:
            handle = open_handle(item.location)
            try:
                length = handle.size if item.length < 0 else item.length
                return len(handle.pread(length, item.offset))
            finally:
                handle.close()
        except Exception as exc:  # background warm-up: never fatal
            log(f"prefetch of {item} failed: {exc}")
            return 0

    def run() -> None:
        with ThreadPoolExecutor(threads, thread_name_prefix="prefetch") as pool:
            total = sum(pool.map(one, objects))
        log(f"prefetched {len(objects)} stored files ({total} bytes) for {what}")

    threading.Thread(target=run, name="prefetch", daemon=True).start()
