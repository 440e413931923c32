"""The mounted namespace: inodes, the merged tree, and POSIX name operations.

The tree starts as the backup's file list (or a snapshot) and changes only
through the operations here; each change is journaled (see `journal.py`)
before it is answered. A file that came from the backup keeps its `origin`
(its path in the backup) for life: renaming, linking or unlinking it copies
no data, and its content stays "the backup's bytes, except the blocks its diff
object holds". An inode identifies an object, not a path: an unlinked file
lives on while the kernel knows it (lookup count) or it is open.

No FUSE and no I/O besides the journal append: everything here is tested
without a mount.
"""

from __future__ import annotations

import errno
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pbkfs.diff import journal as J

ROOT_INO = 1
# file, directory, symlink, FIFO, socket (a FIFO or socket is a name and a mode: no content)
KIND_BITS = {
    "f": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK, "p": stat.S_IFIFO, "s": stat.S_IFSOCK,
}
NAME_MAX = 255
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class FsError(Exception):
    """An operation fails with this errno (the FUSE adapter passes it to the kernel)."""

    def __init__(self, err: int, what: str = "") -> None:
        self.errno = err
        super().__init__(f"{errno.errorcode.get(err, err)}: {what}" if what else str(err))


class Node:
    """One inode: a file, directory, symlink, FIFO or socket."""

    __slots__ = (
        "ino",
        "kind",
        "mode",
        "uid",
        "gid",
        "mtime_ns",
        "ctime_ns",
        "atime_ns",
        "size",
        "origin",
        "fid",
        "target",
        "children",
        "parent",
        "name",
        "links",
        "nsubdirs",
        "lookups",
        "opens",
        "inflight",
        "slot",
        "jpos",
        "freed",
        "err_no",
        "err_seq",
        "unsynced",
        "err_reported",
    )

    def __init__(self, ino: int, kind: str, mode: int, uid: int, gid: int, t_ns: int) -> None:
        self.ino = ino
        self.kind = kind
        self.mode = mode & 0o7777
        self.uid = uid
        self.gid = gid
        self.mtime_ns = t_ns
        self.ctime_ns = t_ns
        self.atime_ns = t_ns
        self.size = 0
        self.origin: str | None = None
        self.fid: int | None = None
        self.target = ""
        self.children: dict[str, Node] | None = {} if kind == "d" else None
        self.parent: Node | None = None
        self.name = ""
        self.links: list[tuple[Node, str]] = []
        self.nsubdirs = 0
        self.lookups = 0
        self.opens = 0
        self.inflight = 0
        self.slot = -1
        self.jpos = 0  # journal position of the last record this node's durability needs
        self.freed = False
        self.err_no = 0  # errno of the newest failed write/fsync of this file
        self.err_seq = 0  # how many failures so far: each open handle reports each once
        self.unsynced = False  # written since its last fsync
        self.err_reported = True  # the newest failure has reached some handle already

    @property
    def st_mode(self) -> int:
        return KIND_BITS[self.kind] | self.mode

    @property
    def nlink(self) -> int:
        if self.kind == "d":
            return 2 + self.nsubdirs if (self.parent is not None or self.ino == ROOT_INO) else 0
        return len(self.links)

    def __repr__(self) -> str:
        return f"Node(ino={self.ino}, kind={self.kind}, name={self.name!r})"


def _now() -> int:
    return time.time_ns()


def split(path: str) -> tuple[str, str]:
    """(parent path, name) of a relative path."""
    i = path.rfind("/")
    return ("", path) if i < 0 else (path[:i], path[i + 1 :])


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise FsError(errno.EINVAL, f"bad name {name!r}")
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        raise FsError(errno.ENAMETOOLONG, name[:40])


class Namespace:
    """The tree, the inode table and the operations that change them."""

    def __init__(
        self,
        uid: int,
        gid: int,
        base_time_ns: int | None = None,
        journal: Callable[[J.Rec], int] | None = None,
    ) -> None:
        self.uid = uid
        self.gid = gid
        self.base_time_ns = base_time_ns if base_time_ns is not None else _now()
        self._journal = journal
        self.inodes: dict[int, Node] = {}
        self.next_ino = ROOT_INO
        self.next_fid = 1
        self.root = self._new("d", 0o700, uid, gid, self.base_time_ns)
        self.root.lookups = 1  # the kernel always knows the root
        self.replaying = False

    # -- inode table -------------------------------------------------------------

    def _new(self, kind: str, mode: int, uid: int, gid: int, t_ns: int) -> Node:
        node = Node(self.next_ino, kind, mode, uid, gid, t_ns)
        self.next_ino += 1
        self.inodes[node.ino] = node
        return node

    def get(self, ino: int) -> Node:
        node = self.inodes.get(ino)
        if node is None:
            raise FsError(errno.ESTALE, f"inode {ino}")
        return node

    def new_fid(self) -> int:
        fid = self.next_fid
        self.next_fid += 1
        return fid

    def _log(self, rec: J.Rec) -> int:
        if self._journal is None or self.replaying:
            return 0
        return self._journal(rec)

    # -- building -----------------------------------------------------------------

    def load_entries(self, entries: Iterable[Any], root_mode: int = 0o700) -> None:
        """Build the tree from a view's entries (path, kind, mode, size, target)."""
        t = self.base_time_ns
        self.root.mode = root_mode
        dirs: dict[str, Node] = {"": self.root}
        for e in entries:
            ppath, name = split(e.path)
            parent = dirs.get(ppath) or self._mkdirs(dirs, ppath)
            node = self._new(e.kind, e.mode, self.uid, self.gid, t)
            if e.kind == "f":
                node.origin = e.path
                node.size = e.size
            elif e.kind == "l":
                node.target = e.target
                node.size = len(e.target.encode("utf-8", "surrogateescape"))
            else:
                dirs[e.path] = node
            self._attach(parent, name, node)

    def _mkdirs(self, dirs: dict[str, Node], path: str) -> Node:
        ppath, name = split(path)
        parent = dirs.get(ppath) or self._mkdirs(dirs, ppath)
        node = self._new("d", 0o700, self.uid, self.gid, self.base_time_ns)
        self._attach(parent, name, node)
        dirs[path] = node
        return node

    def load_snapshot(self, snap: J.Snapshot) -> None:
        """Rebuild the tree from a snapshot."""
        by_key: dict[int, Node] = {}
        dirs: dict[str, Node] = {}
        for sn in snap.nodes:
            if sn.kind == "d" and not by_key and sn.key == 0:
                node = self.root
            else:
                node = self._new(sn.kind, sn.mode, sn.uid, sn.gid, sn.mtime_ns)
            node.mode, node.uid, node.gid = sn.mode & 0o7777, sn.uid, sn.gid
            node.mtime_ns = sn.mtime_ns
            node.origin, node.fid, node.target, node.size = sn.origin, sn.fid, sn.target, sn.size
            by_key[sn.key] = node
        for path, key in snap.names:
            node = by_key[key]
            if path == "":
                dirs[""] = node
                continue
            ppath, name = split(path)
            self._attach(dirs[ppath], name, node)
            if node.kind == "d":
                dirs[path] = node
        self.next_fid = max(self.next_fid, snap.next_fid)

    def snapshot(self, generation: int) -> J.Snapshot:
        """The whole tree; the root is node key 0."""
        nodes: list[J.SnapNode] = []
        names: list[tuple[str, int]] = []
        keys: dict[int, int] = {}

        def key_of(node: Node) -> int:
            k = keys.get(node.ino)
            if k is None:
                k = len(keys)
                keys[node.ino] = k
                nodes.append(
                    J.SnapNode(
                        k, node.kind, node.mode, node.uid, node.gid, node.mtime_ns,
                        node.origin, node.fid, node.target, node.size,
                    )
                )
            return k

        names.append(("", key_of(self.root)))
        for path, node in self.walk():
            names.append((path, key_of(node)))
        return J.Snapshot(generation, self.next_fid, nodes, names)

    def walk(self) -> Iterator[tuple[str, Node]]:
        """Every name below the root with its node, each directory before its entries."""
        stack: list[tuple[str, Node]] = [("", self.root)]
        while stack:
            path, d = stack.pop()
            assert d.children is not None
            for name, child in d.children.items():
                cpath = f"{path}/{name}" if path else name
                yield cpath, child
                if child.kind == "d":
                    stack.append((cpath, child))

    # -- paths ------------------------------------------------------------------------

    def path_of(self, node: Node) -> str | None:
        """A path of the node (its first link for files); None if it has no name."""
        if node.kind == "d":
            parts = []
            n: Node | None = node
            while n is not None and n is not self.root:
                if n.parent is None:
                    return None
                parts.append(n.name)
                n = n.parent
            return "/".join(reversed(parts))
        if not node.links:
            return None
        parent, name = node.links[0]
        ppath = self.path_of(parent)
        if ppath is None:
            return None
        return f"{ppath}/{name}" if ppath else name

    def resolve(self, path: str) -> Node:
        node = self.root
        for part in J.iter_paths(path):
            if node.children is None:
                raise FsError(errno.ENOTDIR, path)
            child = node.children.get(part)
            if child is None:
                raise FsError(errno.ENOENT, path)
            node = child
        return node

    def _child_path(self, parent: Node, name: str) -> str:
        ppath = self.path_of(parent)
        assert ppath is not None, "operation in a removed directory"
        return f"{ppath}/{name}" if ppath else name

    # -- attach/detach --------------------------------------------------------------

    def _attach(self, parent: Node, name: str, node: Node) -> None:
        assert parent.children is not None
        parent.children[name] = node
        if node.kind == "d":
            node.parent = parent
            node.name = name
            parent.nsubdirs += 1
        else:
            node.links.append((parent, name))

    def _detach(self, parent: Node, name: str) -> Node:
        assert parent.children is not None
        node = parent.children.pop(name)
        if node.kind == "d":
            node.parent = None
            parent.nsubdirs -= 1
        else:
            for i, (p, n) in enumerate(node.links):
                if p is parent and n == name:
                    del node.links[i]
                    break
        return node

    def _dir(self, ino_or_node: int | Node) -> Node:
        node = ino_or_node if isinstance(ino_or_node, Node) else self.get(ino_or_node)
        if node.kind != "d":
            raise FsError(errno.ENOTDIR, f"inode {node.ino}")
        if node.parent is None and node is not self.root:
            raise FsError(errno.ENOENT, "directory was removed")
        return node

    def _touch(self, *dirs: Node) -> None:
        t = _now()
        for d in dirs:
            d.mtime_ns = d.ctime_ns = t

    # -- lookups / lifetime -------------------------------------------------------------

    def child(self, parent_ino: int, name: str) -> Node | None:
        d = self.get(parent_ino)
        if d.kind != "d":
            raise FsError(errno.ENOTDIR, f"inode {parent_ino}")
        if name == ".":
            return d
        if name == "..":
            return d.parent or self.root
        assert d.children is not None
        return d.children.get(name)

    def lookup(self, parent_ino: int, name: str) -> Node:
        """A name's inode; counts one kernel reference."""
        node = self.child(parent_ino, name)
        if node is None:
            raise FsError(errno.ENOENT, name)
        node.lookups += 1
        return node

    def forget(self, ino: int, n: int) -> int | None:
        """Drop n kernel references; returns a diff object id to delete, if any."""
        node = self.inodes.get(ino)
        if node is None:
            return None
        node.lookups = max(0, node.lookups - n)
        return self.maybe_free(node)

    def maybe_free(self, node: Node) -> int | None:
        """Free an inode nobody can reach; returns its diff object id for deletion."""
        if node.freed or node.ino == ROOT_INO:
            return None
        if node.lookups or node.opens or node.inflight:
            return None
        if node.kind == "d":
            if node.parent is not None:
                return None
        elif node.links:
            return None
        node.freed = True
        del self.inodes[node.ino]
        return node.fid

    # -- name operations ------------------------------------------------------------------

    def create(
        self,
        parent_ino: int,
        name: str,
        kind: str,
        mode: int,
        uid: int,
        gid: int,
        target: str = "",
    ) -> Node:
        """mknod/create/mkdir/symlink. A new regular file gets a diff object id at once.

        (Its data file appears with its first write: a missing data file reads as empty.)
        """
        _check_name(name)
        d = self._dir(parent_ino)
        assert d.children is not None
        if name in d.children:
            raise FsError(errno.EEXIST, name)
        node = self._new(kind, mode, uid, gid, _now())
        if kind == "f":
            node.fid = self.new_fid()
        elif kind == "l":
            node.target = target
            node.size = len(target.encode("utf-8", "surrogateescape"))
        path = self._child_path(d, name)
        try:  # journal first: a change that cannot be recorded is not made
            pos = self._log(J.Mknode(path, kind, node.mode, uid, gid, node.fid, target))
        except BaseException:
            del self.inodes[node.ino]
            raise
        self._attach(d, name, node)
        self._touch(d)
        node.jpos = d.jpos = pos
        node.lookups += 1
        return node

    def unlink(self, parent_ino: int, name: str) -> tuple[Node, int | None]:
        d = self._dir(parent_ino)
        assert d.children is not None
        node = d.children.get(name)
        if node is None:
            raise FsError(errno.ENOENT, name)
        if node.kind == "d":
            raise FsError(errno.EISDIR, name)
        path = self._child_path(d, name)
        d.jpos = self._log(J.Remove(path))
        self._detach(d, name)
        self._touch(d)
        node.ctime_ns = d.mtime_ns
        return node, self.maybe_free(node)

    def rmdir(self, parent_ino: int, name: str) -> Node:
        if name == ".":
            raise FsError(errno.EINVAL, name)
        d = self._dir(parent_ino)
        assert d.children is not None
        node = d.children.get(name)
        if node is None:
            raise FsError(errno.ENOENT, name)
        if node.kind != "d":
            raise FsError(errno.ENOTDIR, name)
        if node.children:
            raise FsError(errno.ENOTEMPTY, name)
        path = self._child_path(d, name)
        d.jpos = self._log(J.Remove(path))
        self._detach(d, name)
        self._touch(d)
        self.maybe_free(node)
        return node

    def rename(
        self, old_ino: int, old: str, new_ino: int, new: str, flags: int = 0
    ) -> tuple[Node, int | None]:
        """Atomic rename replacing the target; returns (moved node, object id freed by it)."""
        if flags & RENAME_EXCHANGE or flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise FsError(errno.EINVAL, "rename flags")
        _check_name(new)
        sd = self._dir(old_ino)
        dd = self._dir(new_ino)
        assert sd.children is not None and dd.children is not None
        node = sd.children.get(old)
        if node is None:
            raise FsError(errno.ENOENT, old)
        target = dd.children.get(new)
        if target is node:
            return node, None
        if target is not None and flags & RENAME_NOREPLACE:
            raise FsError(errno.EEXIST, new)
        if node.kind == "d":
            a: Node | None = dd
            while a is not None:
                if a is node:
                    raise FsError(errno.EINVAL, "cannot move a directory into itself")
                a = a.parent
        if target is not None:
            if node.kind == "d":
                if target.kind != "d":
                    raise FsError(errno.ENOTDIR, new)
                if target.children:
                    raise FsError(errno.ENOTEMPTY, new)
            elif target.kind == "d":
                raise FsError(errno.EISDIR, new)
        src_path = self._child_path(sd, old)
        dst_path = self._child_path(dd, new)
        freed = None
        pos = self._log(J.Rename(src_path, dst_path))
        if target is not None:
            self._detach(dd, new)
        self._detach(sd, old)
        self._attach(dd, new, node)
        self._touch(sd, dd)
        node.ctime_ns = sd.mtime_ns
        sd.jpos = dd.jpos = pos
        if target is not None:
            target.ctime_ns = sd.mtime_ns
            freed = self.maybe_free(target)
        return node, freed

    def link(self, ino: int, new_ino: int, new: str) -> Node:
        _check_name(new)
        node = self.get(ino)
        if node.kind == "d":
            raise FsError(errno.EPERM, "hard link to a directory")
        d = self._dir(new_ino)
        assert d.children is not None
        if new in d.children:
            raise FsError(errno.EEXIST, new)
        src = self.path_of(node)
        if src is None:
            raise FsError(errno.ENOENT, "link to a removed file")
        dst = self._child_path(d, new)
        pos = self._log(J.Link(src, dst))
        self._attach(d, new, node)
        self._touch(d)
        node.ctime_ns = d.mtime_ns
        d.jpos = node.jpos = pos
        node.lookups += 1
        return node

    def bind(self, node: Node) -> int:
        """Give a backup file its diff object (first write/truncate); journaled by path."""
        if node.fid is not None:
            return node.fid
        fid = self.new_fid()
        path = self.path_of(node)
        if path is not None:
            node.jpos = self._log(J.Bind(path, fid))
        node.fid = fid
        return fid

    def chattr(
        self, node: Node, mode: int | None = None, uid: int | None = None, gid: int | None = None
    ) -> None:
        path = self.path_of(node)
        if path is not None or node is self.root:
            node.jpos = self._log(J.Chattr(path or "", mode, uid, gid))
        if mode is not None:
            node.mode = mode & 0o7777
        if uid is not None:
            node.uid = uid
        if gid is not None:
            node.gid = gid
        node.ctime_ns = _now()

    # -- replay ------------------------------------------------------------------------

    def replay(self, records: Iterable[J.Record], log: Callable[[str], None] | None = None) -> int:
        """Apply journal records (no journaling); returns how many applied.

        A record that does not apply (it cannot, unless the diff was tampered
        with) ends the replay there: what is kept is a prefix, never a guess.
        """
        self.replaying = True
        n = 0
        try:
            for rec in records:
                try:
                    self._apply(rec)
                except FsError as exc:
                    if log:
                        log(f"journal record {n + 1} ({rec}) does not apply: {exc}; "
                            "recovery stops before it")
                    break
                n += 1
        finally:
            self.replaying = False
        return n

    def _at(self, path: str) -> tuple[Node, str]:
        ppath, name = split(path)
        return self.resolve(ppath), name

    def _apply(self, rec: J.Record) -> None:
        if isinstance(rec, J.Mknode):
            d, name = self._at(rec.path)
            node = self.create(d.ino, name, rec.kind, rec.mode, rec.uid, rec.gid, rec.target)
            node.lookups = 0
            if rec.kind == "f":
                node.fid = rec.fid
                if rec.fid is not None:
                    self.next_fid = max(self.next_fid, rec.fid + 1)
        elif isinstance(rec, J.Remove):
            d, name = self._at(rec.path)
            assert d.children is not None
            if name in d.children and d.children[name].kind == "d":
                self.rmdir(d.ino, name)
            else:
                self.unlink(d.ino, name)
        elif isinstance(rec, J.Rename):
            sd, old = self._at(rec.src)
            dd, new = self._at(rec.dst)
            self.rename(sd.ino, old, dd.ino, new)
        elif isinstance(rec, J.Link):
            node = self.resolve(rec.src)
            dd, new = self._at(rec.dst)
            self.link(node.ino, dd.ino, new)
            node.lookups = max(0, node.lookups - 1)
        elif isinstance(rec, J.Bind):
            node = self.resolve(rec.path)
            node.fid = rec.fid
            self.next_fid = max(self.next_fid, rec.fid + 1)
        elif isinstance(rec, J.Chattr):
            node = self.resolve(rec.path)
            self.chattr(node, rec.mode, rec.uid, rec.gid)

    # -- permissions ----------------------------------------------------------------------

    @staticmethod
    def allowed(node: Node, want: int, uid: int, gids: Iterable[int]) -> bool:
        """access(2) check with the node's owner and mode (root may do anything but exec)."""
        if uid == 0:
            return not (want & 1) or node.kind == "d" or bool(node.mode & 0o111)
        if uid == node.uid:
            bits = (node.mode >> 6) & 7
        elif node.gid in set(gids):
            bits = (node.mode >> 3) & 7
        else:
            bits = node.mode & 7
        return (bits & want) == want

    def dir_entries(self, node: Node) -> list[tuple[str, Node]]:
        d = self._dir(node)
        assert d.children is not None
        return list(d.children.items())

    def gc_fids(self) -> set[int]:
        """Every diff object id the tree still references."""
        return {n.fid for n in self.inodes.values() if n.fid is not None}
