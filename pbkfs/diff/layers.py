"""Branches: a diff stacked on an unmounted parent diff, which becomes a read-only layer.

`pbkfs mount -d NEW --from DIFF` binds NEW to DIFF's backup with `parent` = DIFF.
Nothing is copied: NEW's namespace starts as DIFF's, and every file DIFF had
changed reads through DIFF's object. Such a file's origin, in NEW's tree and in
the maps of NEW's own objects, is a *layer reference* `/layer/<depth>/<fid>`:
object `fid` of the ancestor at `depth` (1 is the diff bound straight to the
backup). A backup path never starts with "/", so a reference cannot be taken
for one; and a layer's own references name only shallower layers, so reads
resolve newest layer first down to the backup, as a backup chain does.

Rules that keep an ancestor what its children saw:

* a diff with live children (their binding names it as parent) is never
  mounted writable, reset or wiped: the refusal names the children;
* a mount of a branch holds a shared flock on every ancestor's lock file for
  its lifetime, so an ancestor cannot be mounted (exclusive flock) meanwhile;
* the child is registered in the parent (`children/`, durable) before the
  child's binding is written: a crash between the two leaves a stale entry,
  which counts for nothing, never a child its parent does not know.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable

import msgspec

from pbkfs.diff import journal as J
from pbkfs.diff.blockmap import BlockMap, MapFormatError, blocks_for
from pbkfs.diff.directory import Binding, DiffDir, flock_nb, write_atomic
from pbkfs.diff.objects import BaseReader, data_path, map_path, read_object
from pbkfs.errors import CorruptionError, UsageError
from pbkfs.fsutil import fsync_dir

LAYER_PREFIX = "/layer/"
MAX_DEPTH = 64  # a loop in hand-edited bindings ends here, not in a recursion error
CHILDREN = "children"


WHOLE = "/data"  # the ref's object has no map: every byte is in its data file


def layer_ref(depth: int, fid: int, whole: bool = False) -> str:
    """`/layer/<depth>/<fid>`, with `/data` for a file made in that layer (no map): a
    reader then knows which files must be there and never takes a lost map for
    "no backup blocks"."""
    return f"{LAYER_PREFIX}{depth}/{fid}{WHOLE if whole else ''}"


def parse_ref(origin: str) -> tuple[int, int, bool] | None:
    """(depth, fid, whole) of a layer reference; None for a backup path."""
    if not origin.startswith(LAYER_PREFIX):
        return None
    depth, _, rest = origin[len(LAYER_PREFIX):].partition("/")
    fid, _, kind = rest.partition("/")
    return int(depth), int(fid), kind == WHOLE[1:]


# -- lineage ------------------------------------------------------------------------------

def ancestors(diff: DiffDir, binding: Binding) -> list[tuple[DiffDir, Binding]]:
    """The diffs under `diff`, bottom (bound to the backup) first."""
    out: list[tuple[DiffDir, Binding]] = []
    seen = {os.path.realpath(diff.path)}
    parent = binding.parent
    while parent:
        real = os.path.realpath(parent)
        if real in seen or len(out) >= MAX_DEPTH:
            raise UsageError(f"{diff.path}: its parent diffs form a loop or are more than "
                             f"{MAX_DEPTH} deep (at {parent})")
        seen.add(real)
        pdiff = DiffDir(real)
        pb = pdiff.read_binding()
        if pb is None:
            raise UsageError(f"{diff.path} is a branch of {real}, which is no longer a "
                             "pbkfs diff (binding.json missing)")
        out.append((pdiff, pb))
        parent = pb.parent
    out.reverse()
    return out


def _entry_name(child_path: str) -> str:
    return hashlib.sha1(child_path.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def live_children(diff: DiffDir) -> list[str]:
    """Diffs stacked on `diff` now: registered here and bound to it as their parent."""
    d = os.path.join(diff.path, CHILDREN)
    try:
        names = sorted(os.listdir(d))
    except (FileNotFoundError, NotADirectoryError):
        return []  # no branches (or no diff here: the caller says what is wrong)
    me = os.path.realpath(diff.path)
    out: list[str] = []
    for name in names:
        try:
            with open(os.path.join(d, name), encoding="utf-8", errors="surrogateescape") as f:
                child = f.read().strip()
            b = DiffDir(child).read_binding()
        except (OSError, UsageError):
            continue
        if b is not None and os.path.realpath(b.parent or "/nonexistent") == me:
            out.append(child)
    return sorted(out)


def refuse_if_parent(diff: DiffDir, what: str) -> None:
    """A diff other diffs stand on stays as they saw it."""
    children = live_children(diff)
    if children:
        shown = ", ".join(children[:5]) + (" ..." if len(children) > 5 else "")
        raise UsageError(f"diff directory {diff.path} is the parent of {len(children)} "
                         f"branch(es) ({shown}): {what} refused; remove the branches first "
                         "(pbkfs cleanup -d BRANCH)")


def register_child(parent: DiffDir, child_path: str) -> None:
    d = os.path.join(parent.path, CHILDREN)
    os.makedirs(d, mode=0o700, exist_ok=True)
    write_atomic(os.path.join(d, _entry_name(child_path)), child_path.encode(
        "utf-8", "surrogateescape"))


def unregister_child(parent_path: str, child_path: str) -> None:
    """Best effort: a stale entry counts for nothing anyway."""
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(parent_path, CHILDREN, _entry_name(child_path)))
        fsync_dir(os.path.join(parent_path, CHILDREN))


def hold_shared(parent: DiffDir) -> int:
    """A shared flock on an ancestor's lock file (refused while it is mounted)."""
    fd, holder = flock_nb(parent.lock_path, fcntl.LOCK_SH)
    if fd < 0:
        raise UsageError(f"parent diff {parent.path} is mounted{holder}: a branch needs "
                         "its parent unmounted")
    return fd


def parent_binding(parent: DiffDir) -> Binding:
    """The binding of a diff to branch from; refused if it cannot be one."""
    pb = parent.read_binding()
    if pb is None:
        raise UsageError(f"--from {parent.path}: not a pbkfs diff (no binding.json)")
    if not pb.resumable:
        raise UsageError(f"--from {parent.path}: mounted with --no-wal, its WAL is gone; "
                         "it cannot be branched")
    return pb


def branch_binding(child: DiffDir, parent: DiffDir) -> Binding:
    """Bind a new, empty `child` to `parent`'s backup with `parent` under it."""
    pb = parent_binding(parent)
    if os.path.realpath(child.path) == os.path.realpath(parent.path):
        raise UsageError("--from names the diff directory itself")
    if child.read_binding() is not None:
        raise UsageError(f"diff directory {child.path} already holds a diff: mount it "
                         "without --from")
    b = msgspec.structs.replace(pb, parent=os.path.realpath(parent.path))
    register_child(parent, os.path.realpath(child.path))
    write_atomic(child.binding_path, msgspec.json.encode(b))
    return b


# -- the namespace a branch starts from ----------------------------------------------------

# (layer, the tree under it, its snapshot, its journal records, its base time) -> its tree
NamespaceOpener = Callable[
    [DiffDir, J.Snapshot | None, J.Snapshot | None, list[J.Record], int], J.Snapshot]


def read_latest(ns_dir: str) -> tuple[J.Snapshot | None, list[J.Record]]:
    """The newest complete generation of a diff's namespace, opening nothing for writing."""
    snap, records, _valid = J.read_generation(ns_dir, J.latest_generation(ns_dir))
    return snap, records


def as_layer(snap: J.Snapshot, depth: int) -> J.Snapshot:
    """A layer's final tree as the starting tree of a diff stacked on it: every file
    with an object of that layer now reads through it (origin = layer reference)."""
    nodes = [
        msgspec.structs.replace(n, origin=layer_ref(depth, n.fid, whole=n.origin is None),
                                fid=None)
        if n.kind == "f" and n.fid is not None else n
        for n in snap.nodes
    ]
    return msgspec.structs.replace(snap, nodes=nodes, generation=0)


def base_snapshot(lineage: list[tuple[DiffDir, Binding]], open_layer: NamespaceOpener
                  ) -> J.Snapshot | None:
    """The tree a branch starts from: each ancestor's namespace on the one below."""
    base: J.Snapshot | None = None
    for depth, (layer, binding) in enumerate(lineage, 1):
        snap, records = read_latest(layer.ns)
        tree = open_layer(layer, base, snap, records, binding.base_time_ns)
        base = as_layer(tree, depth)
    return base


# -- reading through ancestors ----------------------------------------------------------------

class _Open:
    """An object's data file descriptor and its map's bits (the map file is closed).

    The descriptor closes with the last reference: a thread still reading an
    object the table dropped keeps it open until its read is done.
    """

    __slots__ = ("fd", "size", "map")

    def __init__(self, fd: int, size: int, bm: BlockMap | None) -> None:
        self.fd, self.size, self.map = fd, size, bm

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class LayerReader:
    """The objects of one ancestor diff, read-only; shared by a process's threads."""

    def __init__(self, objects: str, block_size: int, max_open: int = 64) -> None:
        self.objects = objects
        self.bs = block_size
        self.max_open = max_open
        self._open: OrderedDict[int, _Open] = OrderedDict()
        self._lock = threading.Lock()

    def _get(self, fid: int, whole: bool) -> _Open:
        with self._lock:
            o = self._open.get(fid)
            if o is not None:
                self._open.move_to_end(fid)
                return o
        bm: BlockMap | None = None
        path = data_path(self.objects, fid)
        try:
            if not whole:
                path = map_path(self.objects, fid)
                bm = BlockMap.load(path, writable=False)
                bm.close()  # the bits are in memory
                path = data_path(self.objects, fid)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (OSError, MapFormatError) as exc:
            # A layer never changes under its branches: a file of it gone or damaged is
            # an error for the reader (EIO and a log line), never bytes from elsewhere.
            raise CorruptionError(path, f"object {fid} of a parent diff cannot be read "
                                  f"({exc})") from None
        size = os.fstat(fd).st_size
        if bm is not None:
            # As that layer's own mount would read it (BlockMap.clamp), in memory only.
            bm.horizon = min(bm.horizon, blocks_for(size, self.bs))
        o = _Open(fd, size, bm)
        with self._lock:
            old = self._open.get(fid)
            if old is not None:  # another thread opened it meanwhile
                return old
            self._open[fid] = o
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
        return o

    def size(self, fid: int, whole: bool) -> int:
        return self._get(fid, whole).size

    def read(self, fid: int, whole: bool, off: int, length: int, base: BaseReader) -> bytes:
        o = self._get(fid, whole)
        origin = o.map.origin if o.map is not None else None
        return read_object(o.fd, o.size, o.map, origin, self.bs, base, off, length)

    def close(self) -> None:
        with self._lock:
            self._open.clear()


class Layers:
    """Every ancestor of a branch, by depth; resolves layer references for a Source."""

    def __init__(self, objects_dirs: list[str], block_size: int) -> None:
        self.readers = [LayerReader(d, block_size) for d in objects_dirs]

    def read(self, ref: str, off: int, length: int, base: BaseReader) -> bytes:
        depth, fid, whole = self._parse(ref)
        return self.readers[depth - 1].read(fid, whole, off, length, base)

    def size(self, ref: str) -> int:
        depth, fid, whole = self._parse(ref)
        return self.readers[depth - 1].size(fid, whole)

    def _parse(self, ref: str) -> tuple[int, int, bool]:
        parsed = parse_ref(ref)
        if parsed is None or not 1 <= parsed[0] <= len(self.readers):
            raise FileNotFoundError(f"{ref}: no such layer (this diff has "
                                    f"{len(self.readers)} under it)")
        return parsed

    def close(self) -> None:
        for r in self.readers:
            r.close()
