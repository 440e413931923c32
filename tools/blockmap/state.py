"""Reading a diff directory's state without changing it: binding, namespace, block maps.

A mount rebuilds its namespace from the newest snapshot plus the journal of
that generation; this does the same with the mount's own code
(`pbkfs.diff.journal.read_generation`, `pbkfs.fs.settle.open_namespace`), but
opens nothing for writing and never cuts a journal tail, so it is safe on a
diff a live mount is using.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from pbkfs.diff import journal as J
from pbkfs.diff.blockmap import BlockMap, MapFormatError
from pbkfs.diff.directory import Binding, DiffDir
from pbkfs.diff.objects import map_path
from pbkfs.errors import UsageError
from pbkfs.fs.namespace import Namespace
from pbkfs.fs.settle import open_namespace
from pbkfs.view.source import Source, SourceSpec, open_source

log = logging.getLogger("tools.blockmap")


@dataclass
class ObjMap:
    """The block map of one diff object: bitmap bytes and horizon, and where they came from."""

    bits: bytes
    horizon: int
    base_size: int | None
    where: str  # "shm" (live mount) or "disk" (<fid>.map)


@dataclass
class DiffState:
    diff: DiffDir
    binding: Binding
    source: Source
    ns: Namespace
    generation: int
    replayed: int
    maps: dict[int, ObjMap] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def read_binding(diff: DiffDir) -> Binding:
    if not os.path.isdir(diff.path):
        raise UsageError(f"diff directory {diff.path} does not exist")
    b = diff.read_binding()
    if b is None:
        raise UsageError(f"{diff.path} is not a pbkfs diff directory (no binding.json)")
    return b


def read_generation(ns_dir: str) -> tuple[int, J.Snapshot | None, list[J.Record]]:
    """(generation, snapshot, journal records) of the newest complete generation, read-only.

    A live mount may start a new generation while we read; the old files are
    removed only after the new ones are complete, so a retry finds a whole one.
    """
    if not os.path.isdir(ns_dir):
        return 0, None, []
    for _attempt in range(5):
        gen = J.JournalDir(ns_dir).latest()  # lists the directory, opens nothing
        try:
            snap, records, _valid = J.read_generation(ns_dir, gen)
        except FileNotFoundError:
            continue
        return gen, snap, records
    raise UsageError(f"{ns_dir}: the namespace generation kept changing while it was read")


def load_state(diff_path: str, store_override: str | None = None) -> DiffState:
    """Binding, source view and the namespace as the next mount would see it."""
    diff = DiffDir(diff_path)
    binding = read_binding(diff)
    spec = binding.source
    if store_override and spec.kind == "catalog":
        spec = SourceSpec("catalog", store=os.path.abspath(store_override),
                          instance=spec.instance, backup_id=spec.backup_id)
    source = open_source(spec)
    gen, snap, records = read_generation(diff.ns)
    problems: list[str] = []
    ns, replayed = open_namespace(diff, source, binding.base_time_ns, snap, records,
                                  log=problems.append)
    state = DiffState(diff, binding, source, ns, gen, replayed, problems=problems)
    state.maps = disk_maps(diff, ns)
    return state


def disk_maps(diff: DiffDir, ns: Namespace) -> dict[int, ObjMap]:
    """Block maps of every object the namespace references, from `<fid>.map`."""
    out: dict[int, ObjMap] = {}
    for node in ns.inodes.values():
        if node.fid is None or node.origin is None or node.kind != "f":
            continue
        try:
            bm = BlockMap.load(map_path(diff.objects, node.fid), writable=False)
        except (FileNotFoundError, MapFormatError):
            continue
        try:
            out[node.fid] = ObjMap(bytes(bm.bits), bm.horizon, bm.base_size, "disk")
        finally:
            bm.close()
    return out
