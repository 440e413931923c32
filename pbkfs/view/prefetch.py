"""What a mount of an object-store catalog fetches ahead of PostgreSQL.

PostgreSQL's start reads pg_control and the rest of global/; a backend that connects to a
database reads that database's relation map (`pg_filenode.map`) first and then a known set
of its system catalogs (the relation cache is rebuilt from pg_class, pg_attribute, pg_proc,
pg_type, pg_index, the operator classes... when the backup holds no relcache init file, and
a backup never does), through the page index of every backup that holds pages of them.
Fetched one read at a time that is one round trip after another; fetched in parallel ahead
of the reads, they are in the host's cache before PostgreSQL asks.

So the plan has two parts: global/, fetched when the mount starts, and per database
directory the catalogs of CONNECTION_CATALOGS, fetched when its `pg_filenode.map` is first
read (a backend connecting to it): a database nobody connects to (template0) is never
fetched, nor are the catalogs a connection does not read (pg_depend, pg_description,
pg_rewrite and its TOAST: half the bytes of a fresh database's catalogs, and far more in a
database with many objects). A file is fetched whole only up to PREFETCH_MAX_BYTES: past
that (pg_attribute of a database with many tables) its pages are fetched as they are read.
Each file comes with its region of the page index (page_header_map), not the whole index
(which grows with the backup). A catalog rewritten since initdb (VACUUM FULL) has a new
file name and is not in the plan: it is read on demand. WAL is not fetched here: the
first mount copies the backup's pg_wal into the diff.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from pbkfs.storage.location import Location, open_handle
from pbkfs.view.chainview import ChainView

# A main fork (no _fsm/_vm/_init, no .N) in a database directory: base/<db> or a
# tablespace's pg_tblspc/<ts>/<version dir>/<db>.
SYSTEM_CATALOG = re.compile(r"(base/\d+|pg_tblspc/\d+/[^/]+/\d+)/(\d+)")
RELATION_MAP = "pg_filenode.map"
THREADS = 8
PREFETCH_MAX_BYTES = 1 << 20  # stored bytes of one file fetched whole ahead, at most

# The system catalogs (file name = OID as initdb makes them) a backend reads when it
# connects and plans its first queries: the relation cache's build and the planner's
# look-ups of operators, casts and statistics (as seen reading a fresh connection).
CONNECTION_CATALOGS: dict[int, str] = {
    1259: "pg_class", 2662: "pg_class_oid_index", 2663: "pg_class_relname_nsp_index",
    1249: "pg_attribute", 2659: "pg_attribute_relid_attnum_index",
    1255: "pg_proc", 2690: "pg_proc_oid_index", 2691: "pg_proc_proname_args_nsp_index",
    1247: "pg_type", 2703: "pg_type_oid_index",
    2610: "pg_index", 2678: "pg_index_indrelid_index", 2679: "pg_index_indexrelid_index",
    2601: "pg_am", 2616: "pg_opclass", 2687: "pg_opclass_oid_index",
    2602: "pg_amop", 2653: "pg_amop_fam_strat_index", 2654: "pg_amop_opr_fam_index",
    2603: "pg_amproc", 2655: "pg_amproc_fam_proc_index",
    2615: "pg_namespace", 2684: "pg_namespace_nspname_index",
    2617: "pg_operator", 2688: "pg_operator_oid_index",
    2689: "pg_operator_oprname_l_r_n_index",
    2605: "pg_cast", 2661: "pg_cast_source_target_index",
    2600: "pg_aggregate", 2650: "pg_aggregate_fnoid_index",
    2619: "pg_statistic", 2696: "pg_statistic_relid_att_inh_index",
    3379: "pg_statistic_ext_relid_index",
}


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
    """The stored copies of global/ and of every database's connection catalogs in every
    chain member (of files the target backup still has, up to PREFETCH_MAX_BYTES each),
    each preceded by its region of that member's page index."""
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
                if m is None or int(m.group(2)) not in CONNECTION_CATALOGS:
                    continue
                out = databases.setdefault(m.group(1), [])
            if entry.size > PREFETCH_MAX_BYTES:
                continue  # read page by page as PostgreSQL asks
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
