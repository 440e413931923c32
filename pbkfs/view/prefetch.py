"""What a mount of an object-store catalog fetches at once when it starts.

PostgreSQL's start and first query read the same things every time: pg_control and the
rest of global/, then the system catalogs (relfilenodes below 16384) of the database it
connects to, through the page index of every backup that holds pages of them. Fetched
one read at a time that is one round trip after another; fetched in parallel when the
mount starts, they are in the host's cache before PostgreSQL asks. Only main forks of
the system catalogs of each database, and global/ whole, with the regions of the page
index (page_header_map) that describe them, not the whole index (which grows with the
backup): a few MB of a backup of any size. WAL is not fetched here: the first mount
copies the backup's pg_wal into the diff.
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
SYSTEM_CATALOG = re.compile(r"base/\d+/(\d+)")  # a main fork (no _fsm/_vm/_init, no .N)
THREADS = 8


class Fetch(NamedTuple):
    """A stored object, or `length` bytes of it from `offset` (length -1: all of it)."""

    location: Location
    offset: int = 0
    length: int = -1

    def __str__(self) -> str:
        return str(self.location) if self.length < 0 else (
            f"{self.location}[{self.offset}+{self.length}]")


def startup_objects(view: ChainView) -> list[Fetch]:
    """What to fetch at mount: the stored copies of global/ and of the system catalogs of
    every database in every chain member, each preceded by its region of that member's
    page index."""
    out: list[Fetch] = []
    for member in view.chain:
        for entry in member.pgdata_entries.values():
            if entry.is_dir or entry.is_symlink or entry.size <= 0:
                continue
            m = SYSTEM_CATALOG.fullmatch(entry.path)
            if entry.path.startswith("global/") or (m and int(m.group(1)) < FIRST_USER_OID):
                if entry.n_headers > 0 and entry.hdr_size > 0:
                    out.append(Fetch(member.page_header_map, entry.hdr_off, entry.hdr_size))
                out.append(Fetch(member.stored_path(entry)))
    return out


def fetch_all(objects: list[Fetch], log: Callable[[str], None],
              threads: int = THREADS) -> None:
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
        log(f"prefetched {len(objects)} stored files ({total} bytes) for PostgreSQL's start")

    threading.Thread(target=run, name="prefetch", daemon=True).start()
