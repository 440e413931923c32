"""Content of diff objects: copy-on-write over the backup, block by block.

An *object* is the content of one file that was changed (or created) in the
mount, stored as `objects/<fid>` (the data file) and, when the file came from
the backup, `objects/<fid>.map` (its block map, see `blockmap.py`). The data
file's length is always the object's logical size, so the host file system
persists the size together with the data (`fdatasync`). Files created in the
mount have no map: every byte is in the data file.

Only the worker that owns an object's inode touches it, one request at a time
per inode; this module holds no locks for object content, only for its table.

Crash rules, in the order the code follows them (docs/CONTRACT.md, "diff on disk"):

* data reaches the data file before its bit is set in the map, and a bit
  reaches the map file only after the data file's fdatasync (`fsync`: data
  file first, then the map): a power loss can lose a write, never turn a
  backup block into zeros;
* a truncation that cuts into backup data first brings the partially kept
  block into the diff (and makes it durable), then shortens the data file and
  makes that durable, then lowers the horizon; on load the horizon is clamped
  to the data file's length, so a crash between the steps is repaired;
* an fsync that fails once fails for good on that object (the host may have
  dropped the pages it could not write: a later fsync would report success
  over lost data).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Protocol

from pbkfs.diff.blockmap import BlockMap, MapFormatError, blocks_for
from pbkfs.diff.sharedmaps import Region
from pbkfs.fsutil import fsync_dir, pread_exact, pwrite_all


class BaseReader(Protocol):
    """What the object store needs from the backup chain view."""

    def read(self, path: str, offset: int, length: int) -> bytes: ...

    def base_size(self, path: str) -> int: ...


def data_path(objects: str, fid: int) -> str:
    return os.path.join(objects, str(fid))


def map_path(objects: str, fid: int) -> str:
    return os.path.join(objects, f"{fid}.map")


def _pad(data: bytes, n: int) -> bytes:
    return data if len(data) >= n else data + bytes(n - len(data))


def read_object(fd: int, size: int, bm: BlockMap | None, origin: str | None, bs: int,
                base: BaseReader, off: int, length: int) -> bytes:
    """Bytes [off, off+length) of an object: its blocks in the diff from the data file,
    the others from `base` at `origin` (one read per run of either kind).

    Shared by the owning worker and by the read-only layers under a branch
    (`pbkfs.diff.layers`): an object reads the same whoever reads it.
    """
    if off >= size or length <= 0:
        return b""
    length = min(length, size - off)
    if bm is None:
        return _pad(pread_exact(fd, length, off), length)
    end = off + length
    parts: list[bytes] = []
    pos = off
    while pos < end:
        b = pos // bs
        in_diff = bm.has(b)
        run_end = min(end, (b + 1) * bs)
        nb = b + 1
        while run_end < end and bm.has(nb) == in_diff:
            run_end = min(end, (nb + 1) * bs)
            nb += 1
        n = run_end - pos
        if in_diff:
            chunk = _pad(pread_exact(fd, n, pos), n)
        else:
            assert origin is not None
            chunk = _pad(base.read(origin, pos, n), n)
        parts.append(chunk)
        pos = run_end
    return b"".join(parts)


class Obj:
    """One open object."""

    __slots__ = ("fid", "origin", "fd", "size", "map", "slot", "dirty", "new", "busy", "failed",
                 "syncing")

    def __init__(self, fid: int, origin: str | None, fd: int, size: int, bm: BlockMap | None):
        self.fid = fid
        self.origin = origin
        self.fd = fd
        self.size = size
        self.map = bm
        self.slot = -1
        self.dirty = False
        self.new = False  # its files were created here: their names need a directory fsync
        self.busy = 0  # operations using it now: never closed under them
        self.failed = 0  # errno of a failed fdatasync: every later fsync reports it
        self.syncing = False  # synced early by another request's thread (_sync_and_close)


class ObjectStore:
    """The objects of one worker (or of a test), over a base reader."""

    def __init__(
        self,
        objects_dir: str,
        base: BaseReader,
        block_size: int = 8192,
        region: Region | None = None,
        max_open: int = 512,
        log: Callable[[str], None] | None = None,
        inherited: dict[int, bytes] | None = None,
    ) -> None:
        self.dir = objects_dir
        self.base = base
        self.bs = block_size
        self.region = region
        self.max_open = max_open
        self.log = log or (lambda _m: None)
        self._objs: OrderedDict[int, Obj] = OrderedDict()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # an early sync ended
        self._region_lock = threading.Lock()
        self._slots: dict[int, int] = {}  # fid -> shared-memory slot, for the object's life
        # Bits an earlier process of this worker set but never synced (from shared memory):
        # adopted when the object is next opened, so a worker's death loses no answered
        # write (docs/CONTRACT.md, "worker restart").
        self.inherited = dict(inherited or {})

    # -- object table ------------------------------------------------------------

    def _get(self, fid: int, origin: str | None) -> Obj:
        """The open object, marked busy (release with _put)."""
        with self._lock:
            obj = self._settled(fid)
            if obj is not None:
                self._objs.move_to_end(fid)
                obj.busy += 1
                return obj
        obj = self._open(fid, origin)
        with self._lock:
            obj.busy = 1
            self._objs[fid] = obj
            self._evict(keep=fid)
            overflow = self._overflow(keep=fid)
        for old in overflow:
            self._sync_and_close(old)
        return obj

    def _settled(self, fid: int) -> Obj | None:
        """The open object `fid` once no early sync of it runs (under self._lock): that sync
        runs outside the inode's request order, so nothing else may use the object
        meanwhile (a write between its data sync and its map sync would make a bit durable
        before its data; an fsync finding it clean would return before the disk did)."""
        obj = self._objs.get(fid)
        while obj is not None and obj.syncing:
            self._idle.wait()
            obj = self._objs.get(fid)
        return obj

    def _put(self, obj: Obj) -> None:
        with self._lock:
            obj.busy -= 1

    @contextlib.contextmanager
    def _using(self, fid: int, origin: str | None) -> Iterator[Obj]:
        obj = self._get(fid, origin)
        try:
            yield obj
        finally:
            self._put(obj)

    def _evict(self, keep: int) -> None:
        if len(self._objs) <= self.max_open:
            return
        for fid in list(self._objs):
            if len(self._objs) <= self.max_open:
                break
            obj = self._objs[fid]
            if fid == keep or obj.busy:
                continue
            if obj.dirty or obj.new or (obj.map is not None and obj.map.dirty):
                continue  # keep what an fsync still has to make durable
            del self._objs[fid]
            self._close(obj, release_slot=False)

    def _overflow(self, keep: int) -> list[Obj]:
        """Objects past max_open that only unsynced writes keep open, least recently used
        first, marked busy: they are synced early and closed (_sync_and_close), or a
        checkpoint that dirties more files than the process may hold descriptors would
        fail its writes with EMFILE. (Writing back before the fsync asks is always
        allowed; it is what the kernel does with dirty pages anyway.)"""
        excess = len(self._objs) - self.max_open
        out: list[Obj] = []
        if excess <= 0:
            return out
        for fid, obj in self._objs.items():
            if len(out) >= excess:
                break
            if fid != keep and not obj.busy and not obj.failed:
                obj.busy += 1
                obj.syncing = True
                out.append(obj)
        return out

    def _sync_and_close(self, obj: Obj) -> None:
        try:
            self._fsync(obj, datasync=False)
        except OSError as exc:
            # kept open: the failure is the next fsync's answer (obj.failed)
            self.log(f"object {obj.fid}: early sync to free descriptors failed: {exc}")
        with self._lock:
            obj.busy -= 1
            obj.syncing = False
            self._idle.notify_all()
            clean = not (obj.busy or obj.failed or obj.dirty or obj.new
                         or (obj.map is not None and obj.map.dirty))
            if clean and self._objs.get(obj.fid) is obj and len(self._objs) > self.max_open:
                del self._objs[obj.fid]
            else:
                return
        self._close(obj, release_slot=False)

    def _open(self, fid: int, origin: str | None) -> Obj:
        dpath = data_path(self.dir, fid)
        bm: BlockMap | None = None
        created = False
        if origin is not None:
            mpath = map_path(self.dir, fid)
            try:
                bm = BlockMap.load(mpath)
            except FileNotFoundError:
                bm = None
            except MapFormatError as exc:
                # A map we cannot trust: start over from the backup (never guess).
                self.log(f"object {fid}: {exc}; starting again from the backup")
                bm = None
            if bm is None:
                # The data file at the backup's length, durable, before the map exists: a
                # map over a data file whose length was lost would cut the file short
                # (the horizon follows the data file's length on load). A data file
                # without a map is garbage on the next mount.
                base_size = self.base.base_size(origin)
                fd = self._create_data(dpath, base_size, os.O_TRUNC)
                bm = BlockMap.create(mpath, origin, base_size, self.bs)
                created = True
            else:
                try:
                    fd = os.open(dpath, os.O_RDWR | os.O_CLOEXEC)
                except FileNotFoundError:
                    fd = self._create_data(dpath, bm.base_size, 0)
                    created = True
        else:
            try:
                fd = os.open(dpath, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                fd = os.open(dpath, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                created = True
        size = os.fstat(fd).st_size
        obj = Obj(fid, origin, fd, size, bm)
        obj.new = created
        if bm is not None:
            kept = self.inherited.pop(fid, None)
            if kept is not None and bm.adopt(kept):
                obj.dirty = True  # the data those bits cover is not synced yet
            if blocks_for(size, self.bs) < bm.horizon:
                # A truncate whose horizon never reached the map (a crash between the
                # two): the length it left must be durable before the horizon follows it.
                os.fdatasync(fd)
            bm.clamp(size)
            self._publish(obj)
        return obj

    @staticmethod
    def _create_data(dpath: str, size: int, flags: int) -> int:
        fd = os.open(dpath, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | flags, 0o600)
        try:
            os.ftruncate(fd, size)
            os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _publish(self, obj: Obj) -> None:
        bm = obj.map
        if self.region is None or bm is None:
            return
        with self._region_lock:
            # An object closed to save descriptors keeps its slot, so a slot the frontend
            # knows never changes owner while that frontend node lives.
            obj.slot = self.region.publish(self._slots.get(obj.fid, -1), obj.fid, bm.bits,
                                           bm.horizon)
            self._slots[obj.fid] = obj.slot
        self._unless_mirrored(obj)

        def mirror(lo: int, hi: int, obj: Obj = obj) -> None:
            assert obj.map is not None and self.region is not None
            with self._region_lock:
                obj.slot = self.region.update(
                    obj.slot, obj.fid, obj.map.bits, lo, hi, obj.map.horizon
                )
                self._slots[obj.fid] = obj.slot
            self._unless_mirrored(obj)

        bm.on_change = mirror

    def _unless_mirrored(self, obj: Obj) -> None:
        """Bits shared memory could not take (the region is full) would die with this
        process: make them durable now instead."""
        if obj.slot < 0 and obj.map is not None and obj.map.unsynced_bits():
            self._fsync(obj, datasync=True)

    def _close(self, obj: Obj, release_slot: bool) -> None:
        os.close(obj.fd)
        if obj.map is not None:
            obj.map.close()
        if release_slot and self.region is not None:
            with self._region_lock:
                self.region.release(self._slots.pop(obj.fid, obj.slot))
            obj.slot = -1

    # -- reading ---------------------------------------------------------------

    def read_base(self, origin: str, size: int, off: int, length: int) -> bytes:
        """Bytes of a file that lives only in the backup (no object yet)."""
        if off >= size or length <= 0:
            return b""
        length = min(length, size - off)
        data = self.base.read(origin, off, length)
        if len(data) < length:
            data += bytes(length - len(data))
        return data

    def read(self, fid: int, origin: str | None, off: int, length: int) -> bytes:
        with self._lock:
            known = fid in self._objs
        if not known and not self._on_disk(fid, origin):
            # Nothing of this object reached the diff (its creation failed: a full diff).
            # A read must not create it: it reads what a write never changed.
            if origin is None:
                return b""  # as an empty data file reads
            return self.read_base(origin, self.base.base_size(origin), off, length)
        with self._using(fid, origin) as obj:
            return self._read(obj, off, length)

    def slot_of(self, fid: int) -> int:
        """The object's shared-memory slot (-1: not open, or not mirrored)."""
        with self._lock:
            obj = self._objs.get(fid)
            return obj.slot if obj is not None else -1

    def _on_disk(self, fid: int, origin: str | None) -> bool:
        """Whether the object's files exist (the map for a backup file, else the data)."""
        path = map_path(self.dir, fid) if origin is not None else data_path(self.dir, fid)
        return os.path.exists(path)

    def _read(self, obj: Obj, off: int, length: int) -> bytes:
        return read_object(obj.fd, obj.size, obj.map, obj.origin, self.bs, self.base, off, length)

    # -- writing ---------------------------------------------------------------

    def write(self, fid: int, origin: str | None, off: int, data: bytes) -> Obj:
        with self._using(fid, origin) as obj:
            self._write(obj, off, data)
        return obj

    def _write(self, obj: Obj, off: int, data: bytes) -> Obj:
        if not data:
            return obj
        end = off + len(data)
        new_size = max(obj.size, end)
        bm = obj.map
        bs = self.bs
        if bm is None or (off // bs >= bm.horizon):
            pwrite_all(obj.fd, data, off)
        else:
            view = memoryview(data)
            pos = off
            direct_start = -1
            while pos < end:
                b = pos // bs
                bstart = b * bs
                bend = bstart + bs
                chunk_end = min(end, bend)
                if bm.has(b):
                    if direct_start < 0:
                        direct_start = pos
                    pos = chunk_end
                    continue
                if direct_start >= 0:
                    pwrite_all(obj.fd, view[direct_start - off : pos - off], direct_start)
                    direct_start = -1
                # First write into a backup block: bring the block in (read-modify-write).
                if pos == bstart and chunk_end == bend:
                    pwrite_all(obj.fd, view[pos - off : chunk_end - off], pos)
                else:
                    assert obj.origin is not None
                    block = bytearray(_pad(self.base.read(obj.origin, bstart, bs), bs))
                    block[pos - bstart : chunk_end - bstart] = view[pos - off : chunk_end - off]
                    limit = min(bs, max(new_size, chunk_end) - bstart)
                    pwrite_all(obj.fd, memoryview(block)[:limit], bstart)
                bm.mark(b, b)  # after the data: never a bit without its block
                pos = chunk_end
            if direct_start >= 0:
                pwrite_all(obj.fd, view[direct_start - off : end - off], direct_start)
        obj.size = new_size
        obj.dirty = True
        return obj

    def truncate(self, fid: int, origin: str | None, size: int) -> Obj:
        with self._using(fid, origin) as obj:
            self._truncate(obj, size)
        return obj

    def _truncate(self, obj: Obj, size: int) -> Obj:
        bm = obj.map
        bs = self.bs
        if size < obj.size and bm is not None and size // bs < bm.horizon:
            # The cut lands in blocks that may still come from the backup: the kept head
            # of the last block must be in the diff, or an extend would bring back the
            # backup's bytes past the cut.
            k = size // bs
            if size % bs and not bm.has(k):
                assert obj.origin is not None
                block = _pad(self.base.read(obj.origin, k * bs, bs), bs)
                pwrite_all(obj.fd, block[: size - k * bs], k * bs)
                bm.mark(k, k)
            os.ftruncate(obj.fd, size)
            obj.size = size
            new_h = blocks_for(size, bs)
            if new_h < bm.horizon:
                # The new length must be durable before the lower horizon is: a horizon
                # over a data file still long would read its holes as zeros.
                self._datasync(obj)
                self._sync_names(obj)
                bm.sync()  # the kept block's bit, with its data already durable
                bm.set_horizon(new_h)
                bm.sync()
            obj.dirty = True
            return obj
        os.ftruncate(obj.fd, size)
        obj.size = size
        obj.dirty = True
        return obj

    def _datasync(self, obj: Obj) -> None:
        if obj.failed:
            raise OSError(obj.failed, f"an earlier fsync of object {obj.fid} failed")
        try:
            os.fdatasync(obj.fd)
        except OSError as exc:
            obj.failed = exc.errno or errno.EIO
            raise

    def fsync(self, fid: int, datasync: bool) -> Obj | None:
        with self._lock:
            obj = self._settled(fid)
            if obj is not None:
                obj.busy += 1
        if obj is None:
            # Not open in this process (closed to save descriptors, or written by a worker
            # that died since): its files may still hold unsynced pages in the host's cache.
            self._sync_closed(fid)
            return None
        try:
            return self._fsync(obj, datasync)
        finally:
            self._put(obj)

    def _sync_closed(self, fid: int) -> None:
        for path in (data_path(self.dir, fid), map_path(self.dir, fid)):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        fsync_dir(self.dir)

    def _fsync(self, obj: Obj, datasync: bool) -> Obj:
        if obj.failed:
            raise OSError(obj.failed, f"an earlier fsync of object {obj.fid} failed")
        if obj.dirty:
            obj.dirty = False
            try:
                (os.fdatasync if datasync else os.fsync)(obj.fd)
            except OSError as exc:
                obj.dirty = True
                obj.failed = exc.errno or errno.EIO
                raise
        self._sync_names(obj)
        if obj.map is not None:
            obj.map.sync()  # after the data: a durable bit always has durable data
        return obj

    def _sync_names(self, obj: Obj) -> None:
        """The first sync of a new object makes its names in objects/ durable, before any
        bit of its map is: a durable bit over a data file whose name was lost would read
        as zeros."""
        if obj.new:
            fsync_dir(self.dir)
            obj.new = False

    def needs_sync(self, fid: int) -> bool:
        """Would fsync of `fid` wait for the disk (anything written since the last one)?"""
        with self._lock:
            obj = self._objs.get(fid)
        return obj is None or obj.syncing or obj.dirty or obj.new or (
            obj.map is not None and obj.map.dirty)

    def remove(self, fid: int) -> None:
        with self._lock:
            self._settled(fid)  # its descriptors are never closed under an early sync
            obj = self._objs.pop(fid, None)
        if obj is not None:
            self._close(obj, release_slot=True)
        elif self.region is not None and fid in self._slots:
            with self._region_lock:
                self.region.release(self._slots.pop(fid))
        for p in (data_path(self.dir, fid), map_path(self.dir, fid)):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    def sync_all(self) -> None:
        with self._lock:
            objs = list(self._objs.values())
        for obj in objs:
            self.fsync(obj.fid, datasync=False)

    def close_all(self) -> None:
        with self._lock:
            objs = list(self._objs.values())
            self._objs.clear()
        for obj in objs:
            self._close(obj, release_slot=True)

    def open_count(self) -> int:
        with self._lock:
            return len(self._objs)


def errno_of(exc: BaseException) -> int:
    """The errno a failed request reports to the kernel."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO
