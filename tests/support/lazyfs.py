"""A pass-through FUSE file system that keeps unsynced file data in memory (the LazyFS idea).

Run as its own process (pyfuse3 serves one file system per process)::

    python -m tests.support.lazyfs ROOT MNT CONTROL_SOCKET

Everything under MNT is ROOT, a plain directory, except *file data*: a write
goes into a per-file map of 4 KiB page images held in this process, together
with the file's logical size and the lowest size a truncate has cut it to
since its last sync. Reads apply that map on top of the real file. The data
reaches ROOT only when the file is fsynced or fdatasynced (write-through, then
the real `fsync`/`fdatasync`), on the control command `flush`, and at a clean
unmount (`fusermount3 -u`, SIGTERM). Every file is opened with `direct_io` and
without `keep_cache`, so the kernel's page cache never holds the data either:
unsynced data lives only in this process, as it lives only in a machine's page
cache.

The control socket takes one line per connection and answers one line:

* `ping`: `ok` once the file system serves;
* `stat`: JSON, the files and pages not yet synced, fsyncs waiting for the disk
  and request counts;
* `flush`: write every unsynced page through to ROOT (and fsync it);
* `fsync-delay SECONDS`: from now on an fsync takes that long to make data durable
  (a disk's flush): what was written before it arrived reaches ROOT only when the
  time is over, so a crash meanwhile loses it and an fsync answered too early
  upstream shows as lost data (default 0: durable at once);
* `crash`: a power loss. Every unsynced page, truncate and extension is dropped,
  also what fsyncs still waiting for the disk were to write (they fail); the
  process answers with what it dropped and exits at once without unmounting, so
  the processes on top see the mount die (ENOTCONN) and nothing more reaches ROOT;
* `crash-keep-random SEED`: like `crash`, but first a random subset (seeded,
  each page with probability 1/2) of the unsynced pages is written through;
  size changes are kept (as a journaling file system keeps its metadata), so
  a page that is not kept reads as the old content, or as zeros where the file
  was extended or cut.

Limitations (the crash-state explorer, tests/unit/test_crash_states.py, covers
what this leaves out: name-level ordering, lost or reordered directory
operations and torn size changes):

* metadata passes straight through and is never lost: create, mknod, mkdir,
  unlink, rmdir, rename, link, symlink, chmod, chown, utimes, and the fsync of
  a directory (which is passed on);
* pages are the unit: all the writes to a page since the last sync are kept
  or lost together;
* locks (`flock`, `fcntl`) are left to the kernel, which handles them locally
  on this mount (pyfuse3 does not implement them);
* one ROOT file system; hard links are followed by inode number.

Requests are handled on one trio thread without an `await` between reading
and changing state, so concurrent access from several processes (the frontend
and the workers of a pbkfs mount all open the same files) sees every write
whole and in the order the kernel delivered it. An fsync awaits only the disk
time (`fsync-delay`, a copy of the file's pages taken when it arrived) and the
real fsync (in a worker thread, after the copy was written through).

`LazyFS` (below) runs the process for a test: start, commands, crash, clean
unmount, and a teardown that always leaves nothing mounted or running.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from pbkfs.fsutil import pwrite_all

PAGE = 4096
TIMEOUT = 1.0  # entry and attribute cache of the kernel; every change goes through us anyway


# --------------------------------------------------------------------------------------------
# The unsynced data of one file


class Dirty:
    """What a file holds beyond the real file: page images, logical size, lowest cut.

    Invariants: `cut <= size`; real bytes at or past `cut` are not part of the
    file any more (read as zeros unless a page holds them); every page image is
    zero at and past `size`; no page starts at or past `size`.
    """

    __slots__ = ("size", "cut", "pages", "lows")

    def __init__(self, real_size: int) -> None:
        self.size = real_size
        self.cut = real_size
        self.pages: dict[int, bytearray] = {}
        self.lows: list[list[int]] = []  # lowest size since each snapshot being synced


def read_view(fd: int, d: Dirty | None, off: int, length: int) -> bytes:
    """Bytes [off, off+length) of the file as the application sees it (short at the end)."""
    if d is None:
        return os.pread(fd, length, off)
    if off >= d.size or length <= 0:
        return b""
    length = min(length, d.size - off)
    buf = bytearray(os.pread(fd, min(length, max(0, d.cut - off)), off) if off < d.cut else b"")
    buf.extend(bytes(length - len(buf)))
    end = off + length
    for pg in range(off // PAGE, (end - 1) // PAGE + 1):
        img = d.pages.get(pg)
        if img is None:
            continue
        lo, hi = max(off, pg * PAGE), min(end, pg * PAGE + PAGE)
        buf[lo - off:hi - off] = img[lo - pg * PAGE:hi - pg * PAGE]
    return bytes(buf)


def write_pages(fd: int, d: Dirty, off: int, data: bytes) -> None:
    """Apply a write to the page map (the real file is only read)."""
    end = off + len(data)
    for pg in range(off // PAGE, (end - 1) // PAGE + 1):
        start = pg * PAGE
        lo, hi = max(off, start), min(end, start + PAGE)
        img = d.pages.get(pg)
        if img is None:
            if lo == start and hi == start + PAGE:
                img = bytearray(PAGE)
            else:
                img = bytearray(read_view(fd, d, start, PAGE))
                img.extend(bytes(PAGE - len(img)))
            d.pages[pg] = img
        img[lo - start:hi - start] = data[lo - off:hi - off]
    d.size = max(d.size, end)


def truncate_pages(d: Dirty, size: int) -> None:
    if size < d.size:
        first_gone = (size + PAGE - 1) // PAGE
        for pg in [p for p in d.pages if p >= first_gone]:
            del d.pages[pg]
        if size % PAGE and size // PAGE in d.pages:
            img = d.pages[size // PAGE]
            img[size % PAGE:] = bytes(PAGE - size % PAGE)
        d.cut = min(d.cut, size)
        for low in d.lows:
            low[0] = min(low[0], size)
    d.size = size


def snapshot(d: Dirty) -> tuple[Dirty, list[int]]:
    """A copy of the unsynced state, and the lowest size `d` will have from now on (kept up
    to date by `truncate_pages` until the copy is settled or dropped)."""
    snap = Dirty(0)
    snap.size, snap.cut = d.size, d.cut
    snap.pages = {pg: bytearray(img) for pg, img in d.pages.items()}
    low = [d.size]
    d.lows.append(low)
    return snap, low


def settle(d: Dirty, snap: Dirty, low: int) -> bool:
    """`snap` was written through: the real file is its view now. Keep in `d` only what
    differs from it; True if nothing does."""
    d.cut = low  # only a cut after the snapshot hides bytes of the new real file
    for pg, img in list(d.pages.items()):
        if snap.pages.get(pg) == img:
            del d.pages[pg]
    return not d.pages and d.cut == d.size == snap.size


def write_through(fd: int, d: Dirty, keep: random.Random | None = None) -> tuple[int, int]:
    """Put the unsynced state into the real file: the cut, the pages, the size.

    With `keep`, each page is written with probability 1/2 (the cut and the size
    always). Returns (pages written, pages dropped).
    """
    if d.cut < os.fstat(fd).st_size:
        os.ftruncate(fd, d.cut)
    kept = dropped = 0
    for pg in sorted(d.pages):
        if keep is not None and keep.random() < 0.5:
            dropped += 1
            continue
        img = d.pages[pg]
        pwrite_all(fd, memoryview(img)[:min(PAGE, d.size - pg * PAGE)], pg * PAGE)
        kept += 1
    if os.fstat(fd).st_size != d.size:
        os.ftruncate(fd, d.size)
    return kept, dropped


# --------------------------------------------------------------------------------------------
# The file system (imports pyfuse3 and trio only when it runs)


def serve(root: str, mnt: str, control: str) -> int:
    import pyfuse3
    import trio

    FUSEError = pyfuse3.FUSEError  # noqa: N806 - the class, under its own name

    class Node:
        __slots__ = ("ino", "real", "kind", "links", "lookups", "fd", "opens", "dirty", "gone",
                     "seq", "synced")

        def __init__(self, ino: int, real: int, kind: int) -> None:
            self.ino = ino
            self.real = real
            self.kind = kind  # stat.S_IFMT of the mode
            self.links: set[tuple[int, bytes]] = set()  # (parent ino, name)
            self.lookups = 0
            self.fd = -1  # the real file, O_RDWR, while open or holding unsynced data
            self.opens = 0
            self.dirty: Dirty | None = None
            self.gone = False  # its last name was removed
            self.seq = 0  # write-throughs started (snapshots taken)
            self.synced = 0  # the newest one written: an older one never overwrites it

    class Handle:
        __slots__ = ("node", "append")

        def __init__(self, node: Node, append: bool) -> None:
            self.node = node
            self.append = append

    class LazyOps(pyfuse3.Operations):
        supports_dot_lookup = True
        enable_writeback_cache = False

        def __init__(self) -> None:
            super().__init__()
            st = os.lstat(root)
            top = Node(pyfuse3.ROOT_INODE, st.st_ino, stat.S_IFDIR)
            top.links.add((pyfuse3.ROOT_INODE, b""))
            self.nodes: dict[int, Node] = {top.ino: top}
            self.by_real: dict[int, Node] = {st.st_ino: top}
            self.next_ino = pyfuse3.ROOT_INODE + 1
            self.handles: dict[int, Handle] = {}
            self.dirs: dict[int, tuple[Node, list[tuple[bytes, os.stat_result]]]] = {}
            self.next_fh = 1
            self.dead = False
            self.fsync_delay = 0.0  # seconds an fsync spends "in the disk" before it counts
            self.in_disk = 0  # fsyncs of files with unsynced data waiting for that now
            self.counts: dict[str, int] = {}

        # -- nodes and paths --------------------------------------------------------------

        def path(self, node: Node) -> bytes:
            parts: list[bytes] = []
            seen = 0
            while node.ino != pyfuse3.ROOT_INODE:
                if not node.links:
                    raise FUSEError(errno.ENOENT)
                parent, name = min(node.links)
                parts.append(name)
                node = self.nodes[parent]
                seen += 1
                if seen > 4096:
                    raise FUSEError(errno.ELOOP)
            return os.path.join(os.fsencode(root), *reversed(parts))

        def child(self, parent: int, name: bytes) -> bytes:
            return os.path.join(self.path(self.node(parent)), name)

        def node(self, ino: int) -> Node:
            if self.dead:
                raise FUSEError(errno.EIO)
            node = self.nodes.get(ino)
            if node is None:
                raise FUSEError(errno.ENOENT)
            return node

        def learn(self, parent: int, name: bytes, st: os.stat_result) -> Node:
            """The node of a name just seen on ROOT (one per real inode)."""
            node = self.by_real.get(st.st_ino)
            if node is None or stat.S_IFMT(st.st_mode) != node.kind:
                node = Node(self.next_ino, st.st_ino, stat.S_IFMT(st.st_mode))
                self.next_ino += 1
                self.nodes[node.ino] = node
                self.by_real[st.st_ino] = node
            node.links.add((parent, name))
            return node

        def attrs(self, node: Node, st: os.stat_result | None = None) -> Any:
            if st is None:
                st = self.stat(node)
            a = pyfuse3.EntryAttributes()
            a.st_ino = node.ino
            a.generation = 0
            a.entry_timeout = TIMEOUT
            a.attr_timeout = TIMEOUT
            a.st_mode = st.st_mode
            a.st_nlink = st.st_nlink
            a.st_uid = st.st_uid
            a.st_gid = st.st_gid
            a.st_rdev = st.st_rdev
            size = node.dirty.size if node.dirty is not None else st.st_size
            a.st_size = size
            a.st_blksize = st.st_blksize
            a.st_blocks = max(st.st_blocks, (size + 511) // 512) if node.dirty else st.st_blocks
            a.st_atime_ns = st.st_atime_ns
            a.st_mtime_ns = st.st_mtime_ns
            a.st_ctime_ns = st.st_ctime_ns
            return a

        def stat(self, node: Node) -> os.stat_result:
            try:
                if node.fd >= 0:
                    return os.fstat(node.fd)
                if node.gone:
                    raise FUSEError(errno.ENOENT)
                return os.lstat(self.path(node))
            except OSError as exc:
                raise FUSEError(exc.errno or errno.EIO) from None

        def opened(self, node: Node) -> int:
            if node.fd < 0:
                path = self.path(node)
                try:
                    node.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
                except PermissionError:
                    node.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            return node.fd

        def dirty(self, node: Node) -> Dirty:
            fd = self.opened(node)
            if node.dirty is None:
                node.dirty = Dirty(os.fstat(fd).st_size)
            return node.dirty

        def maybe_close(self, node: Node) -> None:
            if node.gone and node.opens == 0:
                node.dirty = None  # nobody can ever read it again
            if node.opens == 0 and node.dirty is None and node.fd >= 0:
                os.close(node.fd)
                node.fd = -1
            if node.gone and node.opens == 0 and node.lookups == 0:
                self.nodes.pop(node.ino, None)

        def unlinked(self, node: Node, parent: int, name: bytes, nlink: int) -> None:
            """`parent/name` of `node` is gone; with it its last name if nlink was 1."""
            node.links.discard((parent, name))
            if nlink <= 1 or node.kind == stat.S_IFDIR:
                node.gone = True
                node.links.clear()
                if self.by_real.get(node.real) is node:
                    del self.by_real[node.real]
                self.maybe_close(node)

        def count(self, name: str) -> None:
            self.counts[name] = self.counts.get(name, 0) + 1

        # -- names --------------------------------------------------------------------------

        async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> Any:
            self.count("lookup")
            parent = self.node(parent_inode)
            if name == b".":
                node = parent
            elif name == b"..":
                node = self.nodes[min(parent.links)[0]] if parent.links else parent
            else:
                try:
                    st = os.lstat(os.path.join(self.path(parent), name))
                except OSError as exc:
                    raise FUSEError(exc.errno or errno.EIO) from None
                node = self.learn(parent_inode, name, st)
            attrs = self.attrs(node)
            node.lookups += 1
            return attrs

        async def forget(self, inode_list: Any) -> None:
            for ino, n in inode_list:
                node = self.nodes.get(ino)
                if node is None or ino == pyfuse3.ROOT_INODE:
                    continue
                node.lookups = max(0, node.lookups - n)
                # Nodes stay known while they have names: their unsynced data and their
                # children's paths depend on them. Only a node without names goes.
                if node.gone:
                    self.maybe_close(node)

        async def getattr(self, inode: int, ctx: Any) -> Any:
            self.count("getattr")
            return self.attrs(self.node(inode))

        async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> Any:
            self.count("setattr")
            node = self.node(inode)
            try:
                if fields.update_size:
                    if node.kind != stat.S_IFREG:
                        raise FUSEError(errno.EINVAL)
                    truncate_pages(self.dirty(node), attr.st_size)
                target: bytes | int = node.fd if node.fd >= 0 else self.path(node)
                link = node.kind == stat.S_IFLNK
                if fields.update_mode and not link:
                    os.chmod(target, stat.S_IMODE(attr.st_mode))
                if fields.update_uid or fields.update_gid:
                    os.chown(target, attr.st_uid if fields.update_uid else -1,
                             attr.st_gid if fields.update_gid else -1,
                             **({} if isinstance(target, int) else {"follow_symlinks": False}))
                if fields.update_atime or fields.update_mtime:
                    st = self.stat(node)
                    times = (attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                             attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns)
                    if isinstance(target, int):
                        os.utime(target, ns=times)
                    else:
                        os.utime(target, ns=times, follow_symlinks=False)
            except OSError as exc:
                raise FUSEError(exc.errno or errno.EIO) from None
            return self.attrs(node)

        async def readlink(self, inode: int, ctx: Any) -> bytes:
            node = self.node(inode)
            try:
                return os.readlink(self.path(node))
            except OSError as exc:
                raise FUSEError(exc.errno or errno.EIO) from None

        def _made(self, parent: int, name: bytes, ctx: Any) -> Any:
            path = self.child(parent, name)
            if ctx.uid or ctx.gid:
                os.chown(path, ctx.uid, ctx.gid, follow_symlinks=False)
            node = self.learn(parent, name, os.lstat(path))
            attrs = self.attrs(node)
            node.lookups += 1
            return attrs

        async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                        ctx: Any) -> Any:
            self.count("mknod")
            try:
                os.mknod(self.child(parent_inode, name), mode, rdev)
                return self._made(parent_inode, name, ctx)
            except OSError as exc:
                raise FUSEError(exc.errno or errno.EIO) from None

        async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
            self.count("mkdir")
            try:
                os.mkdir(self.child(parent_inode, name), mode)
                return self._made(parent_inode, name, ctx)
            except OSError as exc:
                raise FUSEError(exc.errno or errno.EIO) from None

        async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                          ctx: Any) -> Any:
            self.count("symlink")
            try:
                os.symlink(target, self.child(parent_inode, name))
                return self._made(parent_inode, name, ctx)
            except OSError as exc:
                raise FUSEError(exc.errno or errno.EIO) from None

        async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                       ctx: Any) -> Any:
            self.count("link")
            node = self.node(inode)
            try:
                os.link(self.path(node), self.child(new_parent_inode, new_name),
                        follow_symlinks=False)
            except OSError as exc:
                raise FUSEError(exc.errno or errno.EIO) from None
            node.links.add((new_parent_inode, new_name))
            attrs = self.attrs(node)
            node.lookups += 1
            return attrs

        def _remove(self, parent_inode: int, name: bytes, rmdir: bool) -> None:
            path = self.child(parent_inode, name)
            try:
                st = os.lstat(path)
                if rmdir:
                    os.rmdir(path)
                else:
                    os.unlink(path)
            except OSError as exc:
                raise FUSEError(exc.errno or errno.EIO) from None
            node = self.by_real.get(st.st_ino)
            if node is not None:
                self.unlinked(node, parent_inode, name, st.st_nlink)

        async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
            self.count("unlink")
            self._remove(parent_inode, name, rmdir=False)

        async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
            self.count("rmdir")
            self._remove(parent_inode, name, rmdir=True)

        async def rename(self, p_old: int, n_old: bytes, p_new: int, n_new: bytes, flags: int,
                         ctx: Any) -> None:
            self.count("rename")
            if flags & ~pyfuse3.RENAME_NOREPLACE:
                raise FUSEError(errno.EINVAL)  # RENAME_EXCHANGE: not needed by pbkfs
            old, new = self.child(p_old, n_old), self.child(p_new, n_new)
            try:
                st = os.lstat(old)
                try:
                    over: os.stat_result | None = os.lstat(new)
                except FileNotFoundError:
                    over = None
                if over is not None and flags & pyfuse3.RENAME_NOREPLACE:
                    raise FUSEError(errno.EEXIST)
                os.rename(old, new)
            except OSError as exc:
                raise FUSEError(exc.errno or errno.EIO) from None
            if over is not None and over.st_ino != st.st_ino:
                victim = self.by_real.get(over.st_ino)
                if victim is not None:
                    self.unlinked(victim, p_new, n_new, over.st_nlink)
            node = self.by_real.get(st.st_ino)
            if node is not None:
                node.links.discard((p_old, n_old))
                node.links.add((p_new, n_new))

        # -- files ------------------------------------------------------------------------------

        def _handle(self, node: Node, flags: int) -> Any:
            self.opened(node)
            node.opens += 1
            if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
                truncate_pages(self.dirty(node), 0)
            fh = self.next_fh
            self.next_fh += 1
            self.handles[fh] = Handle(node, bool(flags & os.O_APPEND))
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

        async def open(self, inode: int, flags: int, ctx: Any) -> Any:
            self.count("open")
            node = self.node(inode)
            if node.kind != stat.S_IFREG:
                raise FUSEError(errno.EINVAL)
            try:
                return self._handle(node, flags)
            except OSError as exc:
                raise FUSEError(exc.errno or errno.EIO) from None

        async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                         ctx: Any) -> Any:
            self.count("create")
            path = self.child(parent_inode, name)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (flags & os.O_EXCL),
                             stat.S_IMODE(mode))
                if ctx.uid or ctx.gid:
                    os.fchown(fd, ctx.uid, ctx.gid)
                st = os.fstat(fd)
                node = self.learn(parent_inode, name, st)
                if node.fd < 0:
                    node.fd = fd
                else:
                    os.close(fd)
                info = self._handle(node, flags)
                attrs = self.attrs(node)
            except OSError as exc:
                raise FUSEError(exc.errno or errno.EIO) from None
            node.lookups += 1
            return info, attrs

        def _fh(self, fh: int) -> Handle:
            if self.dead:
                raise FUSEError(errno.EIO)
            h = self.handles.get(fh)
            if h is None:
                raise FUSEError(errno.EBADF)
            return h

        async def read(self, fh: int, off: int, size: int) -> bytes:
            self.count("read")
            node = self._fh(fh).node
            try:
                return read_view(node.fd, node.dirty, off, size)
            except OSError as exc:
                raise FUSEError(exc.errno or errno.EIO) from None

        async def write(self, fh: int, off: int, buf: bytes) -> int:
            self.count("write")
            h = self._fh(fh)
            try:
                d = self.dirty(h.node)
            except OSError as exc:
                raise FUSEError(exc.errno or errno.EIO) from None
            if h.append:
                off = d.size
            if buf:
                write_pages(h.node.fd, d, off, buf)
            return len(buf)

        async def flush(self, fh: int) -> None:
            self._fh(fh)

        async def release(self, fh: int) -> None:
            h = self.handles.pop(fh, None)
            if h is None or self.dead:
                return
            h.node.opens -= 1
            self.maybe_close(h.node)

        async def fsync(self, fh: int, datasync: bool) -> None:
            self.count("fsync")
            node = self._fh(fh).node
            try:
                if self.fsync_delay > 0:
                    await self._slow_write_through(node)
                elif node.dirty is not None:
                    write_through(node.fd, node.dirty)
                    node.dirty = None
                    node.seq += 1
                    node.synced = node.seq
                fd = os.dup(node.fd)
            except OSError as exc:
                raise FUSEError(exc.errno or errno.EIO) from None
            try:
                await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fd)
            except OSError as exc:
                raise FUSEError(exc.errno or errno.EIO) from None
            finally:
                os.close(fd)
            if self.dead:
                raise FUSEError(errno.EIO)

        async def _slow_write_through(self, node: Node) -> None:
            """A disk that takes `fsync_delay` to make data durable: what was written before
            the fsync arrived reaches ROOT only when that time is over (a crash before
            loses it); later writes stay unsynced; an fsync that finishes after a newer
            one writes nothing."""
            d = node.dirty
            if d is None:
                await trio.sleep(self.fsync_delay)
                return
            snap, low = snapshot(d)
            node.seq += 1
            seq = node.seq
            self.in_disk += 1
            try:
                await trio.sleep(self.fsync_delay)
            finally:
                d.lows.remove(low)
                self.in_disk -= 1
            if self.dead:
                raise FUSEError(errno.EIO)
            if seq > node.synced and node.fd >= 0:
                write_through(node.fd, snap)
                node.synced = seq
                if node.dirty is d and settle(d, snap, low[0]):
                    node.dirty = None

        # -- directories --------------------------------------------------------------------

        async def opendir(self, inode: int, ctx: Any) -> int:
            self.count("opendir")
            node = self.node(inode)
            path = self.path(node)
            entries: list[tuple[bytes, os.stat_result]] = []
            try:
                with os.scandir(path) as it:
                    for e in it:
                        with contextlib.suppress(FileNotFoundError):
                            entries.append((e.name, e.stat(follow_symlinks=False)))
            except OSError as exc:
                raise FUSEError(exc.errno or errno.EIO) from None
            entries.sort()
            fh = self.next_fh
            self.next_fh += 1
            self.dirs[fh] = (node, entries)
            return fh

        async def readdir(self, fh: int, start_id: int, token: Any) -> None:
            if self.dead:
                raise FUSEError(errno.EIO)
            parent, entries = self.dirs[fh]
            for i in range(start_id, len(entries)):
                name, st = entries[i]
                node = self.learn(parent.ino, name, st)
                if not pyfuse3.readdir_reply(token, name, self.attrs(node, st), i + 1):
                    return
                node.lookups += 1

        async def releasedir(self, fh: int) -> None:
            self.dirs.pop(fh, None)

        async def fsyncdir(self, fh: int, datasync: bool) -> None:
            self.count("fsyncdir")
            if self.dead or fh not in self.dirs:
                raise FUSEError(errno.EIO)
            try:
                fd = os.open(self.path(self.dirs[fh][0]), os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                raise FUSEError(exc.errno or errno.EIO) from None
            try:
                await trio.sleep(self.fsync_delay)
                await trio.to_thread.run_sync(os.fsync, fd)
            except OSError as exc:
                raise FUSEError(exc.errno or errno.EIO) from None
            finally:
                os.close(fd)

        async def statfs(self, ctx: Any) -> Any:
            st = os.statvfs(root)
            out = pyfuse3.StatvfsData()
            for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                          "f_ffree", "f_favail", "f_namemax"):
                setattr(out, field, getattr(st, field))
            return out

        # -- the control channel --------------------------------------------------------------

        def unsynced(self) -> dict[str, int]:
            files = [n for n in self.nodes.values() if n.dirty is not None and not n.gone]
            return {"files": len(files),
                    "pages": sum(len(n.dirty.pages) for n in files if n.dirty is not None)}

        def flush_all(self, sync: bool) -> int:
            done = 0
            for node in sorted(self.nodes.values(), key=lambda n: n.ino):
                if node.dirty is not None and not node.gone and node.fd >= 0:
                    write_through(node.fd, node.dirty)
                    node.dirty = None
                    node.seq += 1
                    node.synced = node.seq
                    if sync:
                        os.fsync(node.fd)
                    done += 1
                    self.maybe_close(node)
            return done

        def command(self, line: str) -> dict[str, Any]:
            words = line.split()
            cmd = words[0] if words else ""
            if cmd == "ping":
                return {"ok": True}
            if cmd == "stat":
                return {"ok": True, **self.unsynced(), "fsync_delay": self.fsync_delay,
                        "fsyncs_in_disk": self.in_disk, "requests": self.counts}
            if cmd == "fsync-delay":
                self.fsync_delay = max(0.0, float(words[1]))
                return {"ok": True, "fsync_delay": self.fsync_delay}
            if cmd == "flush":
                return {"ok": True, "files": self.flush_all(sync=True)}
            if cmd in ("crash", "crash-keep-random"):
                rng = random.Random(int(words[1])) if cmd == "crash-keep-random" else None
                self.dead = True  # from here on nothing reaches ROOT
                out = {"ok": True, **self.unsynced(), "kept": 0, "dropped": 0,
                       "fsyncs_lost": self.in_disk}
                for node in sorted(self.nodes.values(), key=lambda n: n.ino):
                    if node.dirty is None or node.gone:
                        continue
                    if rng is None:
                        out["dropped"] += len(node.dirty.pages)
                    else:
                        kept, dropped = write_through(node.fd, node.dirty, keep=rng)
                        out["kept"] += kept
                        out["dropped"] += dropped
                    node.dirty = None
                return out
            return {"ok": False, "error": f"unknown command {line!r}"}

    ops = LazyOps()

    async def control_server() -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(control)
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(control)
        sock.listen(8)
        while True:
            conn, _ = await sock.accept()
            async with trio.SocketStream(conn) as stream:
                data = b""
                with contextlib.suppress(OSError, trio.BrokenResourceError):
                    while not data.endswith(b"\n") and len(data) < 4096:
                        chunk = await stream.receive_some(4096)
                        if not chunk:
                            break
                        data += chunk
                try:
                    reply = ops.command(data.decode(errors="replace").strip())
                except Exception as exc:  # noqa: BLE001 - answered, the file system goes on
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                dying = ops.dead
                with contextlib.suppress(OSError, trio.BrokenResourceError):
                    await stream.send_all(json.dumps(reply).encode() + b"\n")
            if dying:
                # The power is gone: no unmount, no flush; the kernel aborts the connection.
                os._exit(0)

    terminated = False

    async def signals() -> None:
        nonlocal terminated
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
            async for _ in sigs:
                terminated = True
                pyfuse3.terminate()
                return

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(control_server)
            nursery.start_soon(signals)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    os.umask(0)
    # allow_other: PostgreSQL (its own user) reaches pg_wal, the diff's wal/ bound there.
    pyfuse3.init(ops, mnt, {"fsname=lazyfs", "subtype=lazyfs", "default_permissions",
                            "allow_other"})
    try:
        trio.run(main)
    finally:
        if not ops.dead:
            ops.flush_all(sync=True)  # a clean unmount writes everything through
        pyfuse3.close(unmount=terminated)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(control)
    return 0


# --------------------------------------------------------------------------------------------
# Running it from a test


def _mounted(mnt: Path) -> bool:
    want = os.path.abspath(mnt)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == want for line in f)


class LazyFS:
    """One lazyfs process over `root`, mounted at `mnt`; always gone after `teardown`."""

    def __init__(self, root: Path, mnt: Path, control: Path, log: Path) -> None:
        self.root, self.mnt, self.control, self.log = root, mnt, control, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> LazyFS:
        from tests.support.env import REPO

        self.root.mkdir(parents=True, exist_ok=True)
        self.mnt.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.control.unlink()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.lazyfs", str(self.root), str(self.mnt),
                 str(self.control)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lazyfs exited {self.proc.returncode} at start:\n"
                                   f"{self.log_tail()}")
            try:
                if self.command("ping", timeout=5)["ok"]:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.teardown()
                raise RuntimeError(f"lazyfs did not answer at {self.control}:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)

    def command(self, line: str, timeout: float = 120) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.control))
            s.sendall(line.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        if not data:
            raise ConnectionError(f"lazyfs gave no answer to {line!r}")
        out: dict[str, Any] = json.loads(data)
        if not out.get("ok"):
            raise RuntimeError(f"lazyfs {line!r}: {out}")
        return out

    def stat(self) -> dict[str, Any]:
        return self.command("stat")

    def flush(self) -> dict[str, Any]:
        return self.command("flush")

    def crash(self, keep_seed: int | None = None) -> dict[str, Any]:
        """Power loss: unsynced data dropped (or a seeded random part kept); the process
        exits and the dead mount is detached."""
        line = "crash" if keep_seed is None else f"crash-keep-random {keep_seed}"
        out = self.command(line)
        assert self.proc is not None
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.detach()
        return out

    def detach(self) -> None:
        if _mounted(self.mnt):
            subprocess.run(["fusermount3", "-uz", str(self.mnt)], capture_output=True,
                           timeout=30, check=False)

    def unmount(self) -> None:
        """Clean unmount: everything is written through first."""
        if self.proc is not None and self.proc.poll() is None:
            # busy for a moment after the layer above exited (its last descriptors are
            # closed as its processes are reaped): retried for a while, then an error
            deadline = time.monotonic() + 20
            while True:
                res = subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True,
                                     text=True, timeout=60, check=False)
                if res.returncode == 0:
                    break
                if "busy" not in res.stderr.lower() or time.monotonic() > deadline:
                    raise RuntimeError(f"fusermount3 -u {self.mnt}: {res.stderr.strip()} "
                                       f"(held by: {holders_of(self.mnt)})")
                time.sleep(0.5)
            self.proc.wait(timeout=120)
            if self.proc.returncode != 0:
                raise RuntimeError(f"lazyfs exited {self.proc.returncode}:\n{self.log_tail()}")
        self.detach()

    def teardown(self) -> None:
        """Whatever state it is in: the process gone, nothing mounted."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.detach()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> LazyFS:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.teardown()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python -m tests.support.lazyfs ROOT MNT CONTROL_SOCKET")
    sys.exit(serve(os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2]),
                   os.path.abspath(sys.argv[3])))


def holders_of(mnt: Path) -> str:
    """`pid (comm)` of processes with a file or working directory under `mnt`."""
    prefix = str(mnt) + "/"
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        links = [f"/proc/{pid}/cwd"]
        with contextlib.suppress(OSError):
            links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
        for link in links:
            with contextlib.suppress(OSError):
                target = os.readlink(link)
                if target == str(mnt) or target.startswith(prefix):
                    with contextlib.suppress(OSError), open(f"/proc/{pid}/comm") as f:
                        found.append(f"{pid} ({f.read().strip()})")
                    break
    return ", ".join(found) or "no process"

