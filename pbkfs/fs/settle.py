"""Bringing a diff back to a consistent state before a mount serves anything.

After a crash the journal may name objects whose files never reached the disk,
and objects may exist that no name refers to any more (unlinked files, creations
cut short). Sizes always come from the diff files themselves (their length is
the logical size), never from a cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from pbkfs.diff import journal as J
from pbkfs.diff.blockmap import BlockMap, MapFormatError
from pbkfs.diff.directory import DiffDir
from pbkfs.diff.objects import data_path, map_path
from pbkfs.fs.namespace import Namespace
from pbkfs.view.source import Source


def open_namespace(
    diff: DiffDir,
    source: Source,
    base_time_ns: int,
    snap: J.Snapshot | None,
    records: list[J.Record],
    *,
    uid: int = 0,
    gid: int = 0,
    journal: Callable[[J.Rec], int] | None = None,
    log: Callable[[str], None] | None = None,
    base: J.Snapshot | None = None,
) -> tuple[Namespace, int]:
    """The namespace a diff holds, and how many journal records were replayed.

    The snapshot (or, for generation 0, the backup's entries), the journal
    records replayed on top, sizes settled from the diff files. `uid`/`gid`
    own what comes from the backup and the root; `journal` receives the
    records of later changes. A branch starts (generation 0) from `base`, the
    tree of the diffs under it (pbkfs.diff.layers), not from the backup's entries.
    """
    ns = Namespace(uid, gid, base_time_ns, journal=journal)
    if snap is not None:
        ns.load_snapshot(snap)
    elif base is not None:
        ns.load_snapshot(base)
    else:
        ns.load_entries(source.entries(), root_mode=0o700)
    ns.root.uid, ns.root.gid = uid, gid
    replayed = ns.replay(records, log)
    settle_objects(ns, diff, source)
    return ns, replayed


def settle_objects(ns: Namespace, diff: DiffDir, source: Source) -> None:
    """Sizes from the diff files; unusable bindings fall back to the backup."""
    for node in list(ns.inodes.values()):
        if node.fid is None or node.kind != "f":
            continue
        dpath = data_path(diff.objects, node.fid)
        if node.origin is not None:
            try:
                bm = BlockMap.load(map_path(diff.objects, node.fid), writable=False)
                bm.close()
            except (FileNotFoundError, MapFormatError):
                # Bound in the journal but no map made it to disk: nothing was
                # written through it, so the backup content is the content.
                node.fid = None
                node.size = source.base_size(node.origin)
                continue
            try:
                node.size = os.stat(dpath).st_size
            except FileNotFoundError:
                node.size = bm.base_size
        else:
            try:
                node.size = os.stat(dpath).st_size
            except FileNotFoundError:
                node.size = 0


def collect_garbage(ns: Namespace, diff: DiffDir) -> int:
    """Delete objects no name refers to (unlinked files, interrupted creations)."""
    live = ns.gc_fids()
    removed = 0
    for name in os.listdir(diff.objects):
        stem = name.split(".", 1)[0]
        if not stem.isdigit() or int(stem) not in live:
            os.unlink(os.path.join(diff.objects, name))
            removed += 1
    return removed


