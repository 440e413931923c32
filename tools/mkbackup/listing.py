"""What of PGDATA goes into a backup, and how each file is classified (format spec §2.3-§2.5).

The walk follows symlinks the way pg_probackup does, so a tablespace
`pg_tblspc/<oid>` is listed as a plain directory with its contents under that
path; the link target itself is recorded later in tablespace_map.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from pbkfs.errors import CatalogError

# Directories whose contents are never copied (the directory itself is listed).
EXCLUDED_DIR_CONTENT = frozenset(
    {
        "pg_wal",
        "pg_stat_tmp",
        "pgsql_tmp",
        "pg_replslot",
        "pg_dynshmem",
        "pg_notify",
        "pg_serial",
        "pg_snapshots",
        "pg_subtrans",
    }
)
# Root-level directories excluded the same way (server logs; pg_probackup needs --backup-pg-log).
EXCLUDED_ROOT_DIR_CONTENT = frozenset({"log", "pg_log"})
# Root-level files never copied; backup_label/tablespace_map are replaced by the ones
# pg_backup_stop() returns (non-exclusive backup).
EXCLUDED_ROOT_FILES = frozenset(
    {
        "postgresql.auto.conf.tmp",
        "current_logfiles.tmp",
        "recovery.conf",
        "postmaster.pid",
        "postmaster.opts",
        "probackup_recovery.conf",
        "recovery.signal",
        "standby.signal",
        "backup_label",
        "tablespace_map",
    }
)
# Files excluded wherever they are.
EXCLUDED_ANY_FILES = frozenset(
    {"pg_internal.init", "ptrack.map.mmap", "ptrack.map.tmp", "ptrack_init"}
)

_TEMP_REL = re.compile(r"^t\d+_\d+")
_DATAFILE = re.compile(r"^([1-9][0-9]{0,9})(?:\.([1-9][0-9]{0,4}))?$")
_OID = re.compile(r"^[1-9][0-9]{0,9}$")
_FORK = re.compile(r"^([1-9][0-9]{0,9})_(fsm|vm|init)(?:\.[1-9][0-9]{0,4})?$")


@dataclass
class SourceFile:
    """One entry of the PGDATA listing."""

    rel: str  # '/'-separated path relative to PGDATA
    full: str  # absolute path to read (symlinks resolved by the OS)
    mode: int  # st_mode including type bits (of the symlink target)
    size: int
    mtime: int
    is_dir: bool
    is_datafile: bool = False
    segno: int = 0
    db_oid: int = 0


def _db_oid(parts: list[str]) -> int:
    """Database OID for paths under base/<oid>/ or pg_tblspc/<spc>/<ver>/<oid>/ (0 otherwise)."""
    if len(parts) >= 2 and parts[0] == "base" and _OID.match(parts[1]):
        return int(parts[1])
    if len(parts) >= 4 and parts[0] == "pg_tblspc" and _OID.match(parts[3]):
        return int(parts[3])
    return 0


def _in_relation_dir(parts: list[str]) -> bool:
    """True when the last part sits directly in global/, base/<db>/ or a tablespace db dir."""
    d = parts[:-1]
    if d == ["global"]:
        return True
    if len(d) == 2 and d[0] == "base" and _OID.match(d[1]):
        return True
    return len(d) == 4 and d[0] == "pg_tblspc" and _OID.match(d[3]) is not None


def classify(rel: str) -> tuple[bool, int, int]:
    """(is_datafile, segno, dbOid) of a regular file by its path (§2.3)."""
    parts = rel.split("/")
    db_oid = _db_oid(parts)
    if _in_relation_dir(parts):
        m = _DATAFILE.match(parts[-1])
        if m and int(m.group(1)) <= 0xFFFFFFFF:
            return True, int(m.group(2) or 0), db_oid
    return False, 0, db_oid


def _excluded_file(parts: list[str]) -> bool:
    name = parts[-1]
    if len(parts) == 1 and name in EXCLUDED_ROOT_FILES:
        return True
    if name in EXCLUDED_ANY_FILES or name.endswith("_ptrack"):
        return True
    return _in_relation_dir(parts) and _TEMP_REL.match(name) is not None


def _content_excluded(parts: list[str]) -> bool:
    name = parts[-1]
    if name in EXCLUDED_DIR_CONTENT:
        return True
    return len(parts) == 1 and name in EXCLUDED_ROOT_DIR_CONTENT


def list_pgdata(pgdata: Path) -> list[SourceFile]:
    """Every directory and regular file a backup of `pgdata` holds, minus unlogged main forks."""
    if not (pgdata / "global" / "pg_control").is_file():
        raise CatalogError(pgdata, "not a PostgreSQL data directory (no global/pg_control)")
    out: list[SourceFile] = []
    _walk(str(pgdata), [], out)
    return drop_unlogged(out)


def _walk(dirpath: str, prefix: list[str], out: list[SourceFile]) -> None:
    try:
        entries = sorted(os.scandir(dirpath), key=lambda e: e.name)
    except FileNotFoundError:
        return  # removed while we walked (a dropped database, a temp dir)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        parts = [*prefix, entry.name]
        try:
            st = os.stat(entry.path)  # follows symlinks: tablespaces become directories
        except FileNotFoundError:
            continue
        rel = "/".join(parts)
        if stat.S_ISDIR(st.st_mode):
            out.append(
                SourceFile(
                    rel, entry.path, st.st_mode, 0, int(st.st_mtime), True, db_oid=_db_oid(parts)
                )
            )
            if not _content_excluded(parts):
                _walk(entry.path, parts, out)
        elif stat.S_ISREG(st.st_mode):
            if _excluded_file(parts):
                continue
            is_datafile, segno, db_oid = classify(rel)
            out.append(
                SourceFile(
                    rel, entry.path, st.st_mode, st.st_size, int(st.st_mtime), False,
                    is_datafile, segno, db_oid,
                )
            )
        # sockets, fifos, devices: never backed up


def drop_unlogged(files: list[SourceFile]) -> list[SourceFile]:
    """Remove main and _fsm forks of relations that have an _init fork.

    PostgreSQL rebuilds them from _init at startup. pg_probackup 2.5.16 keeps
    the _vm fork of such relations, so this does too (format spec §2.4).
    """
    unlogged: set[tuple[str, str]] = set()
    for f in files:
        if f.is_dir:
            continue
        head, _, name = f.rel.rpartition("/")
        m = _FORK.match(name)
        if m and m.group(2) == "init" and _in_relation_dir(f.rel.split("/")):
            unlogged.add((head, m.group(1)))
    if not unlogged:
        return files
    kept = []
    for f in files:
        head, _, name = f.rel.rpartition("/")
        if not f.is_dir:
            m = _DATAFILE.match(name)
            if m and (head, m.group(1)) in unlogged:
                continue
            m = _FORK.match(name)
            if m and m.group(2) == "fsm" and (head, m.group(1)) in unlogged:
                continue
        kept.append(f)
    return kept


def pgdata_bytes(files: list[SourceFile]) -> int:
    """pgdata-bytes of backup.control: listed file sizes plus 4096 per directory."""
    return sum(4096 if f.is_dir else f.size for f in files)
