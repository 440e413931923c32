"""The file system's operations, independent of FUSE.

`Vfs` answers what the kernel asks, with inode numbers, names as `str` and
`FsError(errno)` for failures; `fuseops.py` only converts to pyfuse3 types.
Names and attributes come from the namespace in this process. Content goes
to the inode's worker, except reads the frontend can serve itself: a file
created in the mount, or a backup file whose requested blocks are all in the
diff (checked in the worker's shared-memory block map), read with one `pread`
of the diff file, when no write, truncate or fsync of that inode is in flight
(so a read never overtakes a write of its inode).

A WRITE is answered once its worker has written it to the diff file: the
kernel's writeback cache already is the write-behind, and an error goes back
on the WRITE itself, so the kernel records it for every descriptor as it does
for a local file system. Failures are also kept per inode as a sequence
number; each open handle reports each failure once, at its next fsync or
flush (errseq, as Linux does).

Sizes are decided here, in request order, before the request goes to the
worker: an answer about size always reflects every write already accepted.
The rules this module keeps are in docs/CONTRACT.md.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Callable

import trio

from pbkfs.diff.journal import JournalDir
from pbkfs.diff.objects import data_path
from pbkfs.diff.sharedmaps import Segment
from pbkfs.fs.namespace import FsError, Namespace, Node
from pbkfs.ipc import protocol as P
from pbkfs.ipc.router import Router


class Handle:
    """An open file: its node, its flags, and the newest failure it has reported."""

    __slots__ = ("node", "flags", "err_seen")

    def __init__(self, node: Node, flags: int) -> None:
        self.node = node
        self.flags = flags
        # Failures someone has already reported are not this handle's; one nobody has
        # seen yet is (Linux samples errseq at open the same way).
        self.err_seen = node.err_seq if node.err_reported else node.err_seq - 1


class Stats:
    """Counters (read by `pbkfs stat` later; cheap increments now)."""

    def __init__(self) -> None:
        self.reads_hot = 0
        self.reads_worker = 0
        self.bytes_read = 0
        self.writes = 0
        self.bytes_written = 0
        self.fsyncs = 0
        self.deferred_fsyncs = 0
        self.journal_syncs = 0


FULL_LOG_EVERY_S = 10.0
FULL_BELOW_BYTES = 16 << 20  # PostgreSQL's default WAL segment
SPREAD_MIN = 64 << 10  # a read this large is the kernel's readahead of a sequential scan
# Workers a scan's readahead is spread over: one CPU goes to the reading backend itself.
SPREAD_WIDTH = max(1, len(os.sched_getaffinity(0)) - 1)


def read_route(ino: int, off: int, length: int, width: int = SPREAD_WIDTH) -> int:
    """Where a read of a file never written here goes (it has nothing to be ordered after).

    Readahead of a sequential scan (large reads) is spread by 1 MiB chunk over `width`
    workers, so one big cold file decodes on the CPUs its reader leaves free. Random page
    reads stay with the inode's own worker. Measured on two CPUs (BENCHMARKS.md): spread,
    each random read woke another process, and four workers ran a cold select-only load
    30 % slower than one; a first scan spread over two or four workers took 0.33 s
    against 0.29-0.30 s in one. The first write of the file binds it; every later request
    goes to the inode's worker.
    """
    return ino + (off >> 20) % width if length >= SPREAD_MIN else ino


class Vfs:
    def __init__(
        self,
        ns: Namespace,
        router: Router,
        objects_dir: str,
        journal: JournalDir,
        segment: Segment | None,
        statfs_path: str,
        log: Callable[[str], None] | None = None,
        max_fds: int = 256,
    ) -> None:
        self.ns = ns
        self.router = router
        self.objects = objects_dir
        self.journal = journal
        self.seg = segment
        self.statfs_path = statfs_path
        self.log = log or (lambda _m: None)
        self.bs = 8192
        self.handles: dict[int, Handle] = {}
        self.dirs: dict[int, list[tuple[str, Node]]] = {}
        self.next_fh = 1
        self.fds: OrderedDict[int, int] = OrderedDict()
        self.max_fds = max_fds
        self.stats = Stats()
        self.journal_lock = trio.Lock()
        # Objects whose last name is gone, waiting until the journal record that removed
        # the name is durable: (journal position, inode, object id).
        self.removals: list[tuple[int, int, int]] = []
        self.defer_fsync = False  # --perf-unsafe (pbkfs.diff.durability)
        self.full_refusals = 0  # requests answered ENOSPC
        self._full_logged_at = -FULL_LOG_EVERY_S
        # Run once, at a file's first read (pbkfs.view.prefetch: a backend connecting to a
        # database reads its relation map first; its catalogs are then fetched ahead).
        self.first_read: dict[int, Callable[[], None]] = {}

    # -- helpers -----------------------------------------------------------------

    def _fh(self, obj: Handle | list[tuple[str, Node]]) -> int:
        fh = self.next_fh
        self.next_fh += 1
        if isinstance(obj, Handle):
            self.handles[fh] = obj
        else:
            self.dirs[fh] = obj
        return fh

    def _handle(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if h is None:
            raise FsError(errno.EBADF, f"file handle {fh}")
        return h

    def _reply(self, reply: P.Reply, what: str) -> P.Reply:
        if isinstance(reply, P.Err):
            if reply.errno == errno.EIO:
                self.log(f"{what}: {reply.message}")
            raise FsError(reply.errno, reply.message)
        return reply

    def _freed(self, fid: int | None, ino: int) -> None:
        """An object nobody can reach any more: delete its diff files once that is safe.

        Its files go only after the journal record that removed its last name is
        durable: a crash before that brings the name back, and it must come back
        with its content (a durable rename over it must not lose both files).
        """
        if fid is None:
            return
        fd = self.fds.pop(fid, None)
        if fd is not None:
            os.close(fd)
        self.removals.append((self.journal.appended, ino, fid))
        self._remove_covered()

    def _remove_covered(self) -> None:
        """Send the removals whose journal records are durable (in each inode's FIFO)."""
        if not self.removals:
            return
        synced = self.journal.synced
        keep = []
        for pos, ino, fid in self.removals:
            if pos <= synced:
                self.router.submit(ino, P.Remove(self.router.rid(), ino, fid))
            else:
                keep.append((pos, ino, fid))
        self.removals = keep

    def _fail(self, node: Node, err: int) -> None:
        """Record a failure of this file's content for every handle open now (and for
        handles opened before any handle has reported it, as Linux's errseq does)."""
        node.err_no = err
        node.err_seq += 1
        node.err_reported = False

    def _report(self, h: Handle, what: str) -> None:
        """Raise the newest failure this handle has not reported yet (errseq)."""
        node = h.node
        if h.err_seen != node.err_seq:
            h.err_seen = node.err_seq
            node.err_reported = True
            raise FsError(node.err_no, f"{what}: an earlier write of this file failed")

    def _settle(self, node: Node) -> None:
        self._freed(self.ns.maybe_free(node), node.ino)

    async def _call(self, node: Node, req: P.Msg) -> P.Reply:
        """`req` answered by the inode's worker; the inode counts as in flight meanwhile."""
        node.inflight += 1
        try:
            return await self.router.submit(node.ino, req).wait()
        finally:
            node.inflight -= 1
            self._settle(node)

    def _failed(self, node: Node, reply: P.Err, what: str) -> None:
        """A write or fsync the worker could not do: recorded for every handle, and logged."""
        self._fail(node, reply.errno)
        self.log(f"{what}: {reply.message}")

    def note_full(self) -> None:
        """A request refused for want of space: say which directory is full, not too often.

        Any operation can meet a full diff (a data write, a namespace journal record of
        a create or rename); the line naming the directory is what the DBA looks for.
        """
        self.full_refusals += 1
        self._log_full()

    def check_space(self) -> None:
        """Say so too when the diff's file system has no space left for PostgreSQL though
        no request here was refused: its WAL in `<diff>/wal` never passes through the mount,
        and a WAL write that fails stops the server before any data write does. "No space"
        is less than one WAL segment: a failed segment is unlinked at once, so the moment
        with nothing free is too short for a periodic check to see."""
        try:
            st = os.statvfs(self.statfs_path)
        except OSError:
            return
        # what a non-root user may use; below one WAL segment PostgreSQL cannot start its
        # next one, and the one it failed to fill it removes again (so "0 free" is brief)
        if st.f_bavail * st.f_frsize < FULL_BELOW_BYTES:
            self._log_full()

    def _log_full(self) -> None:
        now = time.monotonic()
        if now - self._full_logged_at >= FULL_LOG_EVERY_S:
            self._full_logged_at = now
            self.log(f"the diff directory {self.statfs_path} is full "
                     f"({self.full_refusals} requests refused for want of space so far)")

    def _objfd(self, fid: int) -> int | None:
        fd = self.fds.get(fid)
        if fd is not None:
            self.fds.move_to_end(fid)
            return fd
        try:
            fd = os.open(data_path(self.objects, fid), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        self.fds[fid] = fd
        while len(self.fds) > self.max_fds:
            _old, ofd = self.fds.popitem(last=False)
            os.close(ofd)
        return fd

    # -- names ------------------------------------------------------------------

    def lookup(self, parent: int, name: str) -> Node:
        return self.ns.lookup(parent, name)

    def lookup_or_none(self, parent: int, name: str) -> Node | None:
        node = self.ns.child(parent, name)
        if node is not None:
            node.lookups += 1
        return node

    def forget(self, items: list[tuple[int, int]]) -> None:
        for ino, n in items:
            node = self.ns.inodes.get(ino)
            fid = self.ns.forget(ino, n)
            if node is not None:
                self._freed(fid, ino)

    def getattr(self, ino: int) -> Node:
        return self.ns.get(ino)

    def readlink(self, ino: int) -> str:
        node = self.ns.get(ino)
        if node.kind != "l":
            raise FsError(errno.EINVAL, "not a symlink")
        return node.target

    def mknod(self, parent: int, name: str, mode: int, uid: int, gid: int) -> Node:
        """A regular file, a FIFO (mkfifo) or a socket (bind); device nodes are refused."""
        kind = {0: "f", stat.S_IFREG: "f", stat.S_IFIFO: "p", stat.S_IFSOCK: "s"}.get(
            stat.S_IFMT(mode))
        if kind is None:
            raise FsError(errno.EPERM, "device nodes cannot be created")
        return self.ns.create(parent, name, kind, mode, uid, gid)

    def mkdir(self, parent: int, name: str, mode: int, uid: int, gid: int) -> Node:
        return self.ns.create(parent, name, "d", mode, uid, gid)

    def symlink(self, parent: int, name: str, target: str, uid: int, gid: int) -> Node:
        return self.ns.create(parent, name, "l", 0o777, uid, gid, target=target)

    def unlink(self, parent: int, name: str) -> None:
        node, fid = self.ns.unlink(parent, name)
        self._freed(fid, node.ino)

    def rmdir(self, parent: int, name: str) -> None:
        self.ns.rmdir(parent, name)

    def rename(self, p1: int, n1: str, p2: int, n2: str, flags: int) -> None:
        target = self.ns.child(p2, n2)
        _node, fid = self.ns.rename(p1, n1, p2, n2, flags)
        if target is not None:
            self._freed(fid, target.ino)

    def link(self, ino: int, parent: int, name: str) -> Node:
        return self.ns.link(ino, parent, name)

    # -- attributes ---------------------------------------------------------------

    async def setattr(
        self,
        ino: int,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
    ) -> Node:
        node = self.ns.get(ino)
        if mode is not None or uid is not None or gid is not None:
            self.ns.chattr(node, mode, uid, gid)
        if atime_ns is not None:
            node.atime_ns = atime_ns
        if mtime_ns is not None:
            node.mtime_ns = mtime_ns
        if size is not None:
            if node.kind == "d":
                raise FsError(errno.EISDIR, "truncate of a directory")
            if node.kind != "f":
                raise FsError(errno.EINVAL, "truncate of a symlink")
            await self.truncate(node, size)
        return node

    async def truncate(self, node: Node, size: int) -> None:
        if size < 0:
            raise FsError(errno.EINVAL, "negative size")
        if node.fid is None and size == node.size:
            return
        fid = self.ns.bind(node)
        node.size = size
        node.mtime_ns = node.ctime_ns = time.time_ns()
        reply = await self._call(
            node, P.Truncate(self.router.rid(), node.ino, fid, node.origin, size))
        if isinstance(reply, P.Err):
            self._fail(node, reply.errno)
        reply = self._reply(reply, f"truncate {self._name(node)}")
        assert isinstance(reply, P.Done)
        node.slot = reply.slot
        node.unsynced = True

    def _name(self, node: Node) -> str:
        return self.ns.path_of(node) or f"<unlinked inode {node.ino}>"

    # -- files -------------------------------------------------------------------

    async def open(self, ino: int, flags: int) -> int:
        """Open; with O_TRUNC truncate here (the kernel uses atomic O_TRUNC: no setattr)."""
        node = self.ns.get(ino)
        if node.kind == "d":
            raise FsError(errno.EISDIR, "open of a directory")
        if node.kind != "f":
            raise FsError(errno.ELOOP, "open of a symlink")
        node.opens += 1
        fh = self._fh(Handle(node, flags))
        if flags & os.O_TRUNC:
            try:
                await self.truncate(node, 0)
            except BaseException:
                await self.release(fh)
                raise
        return fh

    def create(
        self, parent: int, name: str, mode: int, flags: int, uid: int, gid: int
    ) -> tuple[int, Node]:
        node = self.ns.create(parent, name, "f", mode, uid, gid)
        node.opens += 1
        return self._fh(Handle(node, flags)), node

    async def read(self, fh: int, off: int, length: int) -> bytes:
        node = self._handle(fh).node
        if self.first_read:
            self._run_first_read(node.ino)
        size = node.size
        if off >= size or length <= 0:
            return b""
        length = min(length, size - off)
        fid = node.fid
        if fid is not None and node.inflight == 0:
            hot = node.origin is None
            if not hot and node.slot >= 0 and self.seg is not None:
                hot = self.seg.covered(
                    self.router.worker_of(node.ino), node.slot, fid,
                    off // self.bs, (off + length - 1) // self.bs,
                )
            if hot:
                fd = self._objfd(fid)
                if fd is not None:
                    data = os.pread(fd, length, off)
                    if len(data) == length:
                        self.stats.reads_hot += 1
                        self.stats.bytes_read += length
                        return data
        self.stats.reads_worker += 1
        rid = self.router.rid()
        req = P.Read(rid, node.ino, fid, node.origin, size, off, length)
        route = node.ino if fid is not None else read_route(node.ino, off, length)
        call = self.router.submit(route, req)
        reply = self._reply(await call.wait(), f"read {self._name(node)} at {off}")
        assert isinstance(reply, P.Data)
        if fid is not None and reply.slot >= 0 and node.fid == fid:
            node.slot = reply.slot  # later reads of its diff blocks: from shared memory
        self.stats.bytes_read += len(reply.data)
        return reply.data

    def _run_first_read(self, ino: int) -> None:
        hook = self.first_read.pop(ino, None)
        if hook is not None:
            try:
                hook()
            except Exception as exc:  # a warm-up only: never fails the read
                self.log(f"first-read hook of inode {ino} failed: {exc}")

    async def write(self, fh: int, off: int, data: bytes) -> int:
        """Answered once the inode's worker has written the bytes to the diff file.

        Sizes are updated here first (in request order), reads of an inode with a
        write in flight go to its worker (FIFO), and a failed write is answered
        with its error and recorded for every open handle.
        """
        node = self._handle(fh).node
        fid = self.ns.bind(node)
        end = off + len(data)
        if end > node.size:
            node.size = end
        n = len(data)
        node.unsynced = True
        self.stats.writes += 1
        self.stats.bytes_written += n
        req = P.Write(self.router.rid(), node.ino, fid, node.origin, off, data)
        self._wrote(node, await self._call(node, req), off)
        return n

    def _wrote(self, node: Node, reply: P.Reply, off: int) -> None:
        """Settle a write's reply: its slot, or its failure recorded for every handle."""
        if isinstance(reply, P.Err):
            self._failed(node, reply, f"write {self._name(node)} at {off}")
            raise FsError(reply.errno, reply.message)
        if isinstance(reply, P.Done):
            node.slot = reply.slot

    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self._handle(fh)
        await self.fsync_node(h.node, datasync, h)

    async def fsync_node(self, node: Node, datasync: bool, h: Handle | None = None) -> None:
        """Data, size, block map and name of `node` durable; report failures to `h`."""
        self.stats.fsyncs += 1
        what = f"fsync {self._name(node)}"
        if self.defer_fsync:
            # --perf-unsafe: only recorded; a clean unmount makes everything durable.
            self.stats.deferred_fsyncs += 1
            if h is not None:
                self._report(h, what)
            return
        if node.fid is not None:
            seq = node.err_seq
            reply = await self._call(
                node, P.Fsync(self.router.rid(), node.ino, node.fid, datasync))
            if isinstance(reply, P.Err):
                self._failed(node, reply, what)
                if h is not None:
                    h.err_seen = node.err_seq
                    node.err_reported = True
                raise FsError(reply.errno, reply.message)
            if node.err_seq == seq:
                node.unsynced = False
        # Its name (creation, backup-file binding, renames) must survive too.
        if node.jpos > self.journal.synced:
            await self.sync_journal()
        if h is not None:
            self._report(h, what)

    async def sync_journal(self) -> None:
        async with self.journal_lock:
            if self.journal.appended > self.journal.synced:
                self.stats.journal_syncs += 1
                await trio.to_thread.run_sync(self.journal.sync)
        self._remove_covered()

    async def housekeeping(self, period: float = 1.0) -> None:
        """Removals wait for a durable journal: sync it now and then so space comes back;
        and a full diff is logged even when nothing here was refused (check_space)."""
        while True:
            await trio.sleep(period)
            self.check_space()
            if self.removals:
                await self.sync_journal()

    async def flush(self, fh: int) -> None:
        """close(): report a failure this descriptor has not seen; never wait for the disk."""
        self._report(self._handle(fh), "close")

    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is None:
            return
        h.node.opens -= 1
        self._settle(h.node)

    # -- directories ---------------------------------------------------------------

    def opendir(self, ino: int) -> int:
        node = self.ns.get(ino)
        return self._fh(self.ns.dir_entries(node))

    def readdir(self, fh: int) -> list[tuple[str, Node]]:
        entries = self.dirs.get(fh)
        if entries is None:
            raise FsError(errno.EBADF, f"directory handle {fh}")
        return entries

    def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        if self.defer_fsync:
            self.stats.deferred_fsyncs += 1
            return
        await self.sync_journal()

    # -- misc ----------------------------------------------------------------------

    def statfs(self) -> os.statvfs_result:
        return os.statvfs(self.statfs_path)

    def access(self, ino: int, mode: int, uid: int, gids: list[int]) -> bool:
        node = self.ns.get(ino)
        return self.ns.allowed(node, mode, uid, gids)

    def worker_restarted(self, index: int) -> None:
        """A new process for worker `index`: read through it until writes republish maps.

        Nothing it answered is lost: its data files keep every write, and the block-map
        bits it had not synced are adopted from shared memory by the new process. Sizes
        come back from the data files (writes in flight at the death failed with EIO).
        Without shared memory (tests without a segment) a backup file written since its
        last fsync has lost bits: every handle open on it, or opened before anyone saw
        the failure, gets EIO at its next fsync.
        """
        for node in list(self.ns.inodes.values()):
            if self.router.worker_of(node.ino) != index:
                continue
            node.slot = -1
            if not node.unsynced or node.fid is None:
                continue
            try:
                node.size = os.stat(data_path(self.objects, node.fid)).st_size
            except FileNotFoundError:
                if node.origin is None:
                    node.size = 0
            if node.origin is not None and self.seg is None:
                node.unsynced = False
                self._fail(node, errno.EIO)
                self.log(f"{self._name(node)}: writes not yet fsynced are lost "
                         f"(worker {index} died); its next fsync reports EIO")

    def close_fds(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
