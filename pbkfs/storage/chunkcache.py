"""The local cache of fetched object-store bytes, shared by every process of the host.

An object is cached in aligned chunks (CHUNK bytes), each a file named by a hash of the
object's identity (store, key, size, ETag) and the chunk number, holding the bytes and a
trailer (CRC32C, length). A chunk file is written to a temporary name and renamed into
place, so readers in any process see a whole chunk or none; a chunk whose trailer does
not check is removed and fetched again. Least recently used chunks (by mtime, touched on
use) are evicted when the cache grows past its size, by whichever process finds it over
its bound, under a lock so only one process sweeps at a time. A chunk being read while
it is evicted stays readable through the open descriptor.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

from pbkfs.codecs.crc import crc32c

CHUNK = 256 << 10
TRAILER = struct.Struct("<IQ")  # crc32c of the bytes, their length
TOUCH_EVERY = 60.0  # seconds: a chunk's mtime is refreshed at most this often
SWEEP_EVERY_BYTES = 64 << 20  # written by this process between checks of the total size
FETCH_LOCK = ".fetch.lock"  # byte-range locks: which process fetches which chunks now
FLOCK = struct.Struct("@hhqqi4x")  # struct flock (l_type, l_whence, l_start, l_len, l_pid)
SLOTS_PER_OBJECT = 1 << 16  # lock bytes per object (chunks past the last share the last)


class ChunkCache:
    """Chunks on disk under `root`, at most about `limit` bytes in all."""

    def __init__(self, root: str, limit: int, open_files: int = 64) -> None:
        self.root = root
        self.limit = limit
        self._fds: OrderedDict[str, tuple[int, int]] = OrderedDict()  # path: (fd, length)
        self._lock = threading.Lock()
        self._written = 0
        os.makedirs(root, mode=0o755, exist_ok=True)
        self.open_files = open_files

    @staticmethod
    def object_id(*identity: object) -> str:
        import hashlib  # (loaded by the processes that read a store only)

        return hashlib.sha256("\0".join(map(str, identity)).encode()).hexdigest()[:40]

    def _path(self, oid: str, chunk: int) -> str:
        return os.path.join(self.root, oid[:2], f"{oid}.{chunk}")

    def read(self, oid: str, chunk: int, offset: int, length: int) -> bytes | None:
        """Bytes [offset, offset+length) of a cached chunk, or None if not cached (or bad)."""
        path = self._path(oid, chunk)
        if self._open(path) is None:
            return None
        with self._lock:  # under the lock: no other thread closes the descriptor meanwhile
            got = self._fds.get(path)
            if got is None:
                return None
            fd, size = got
            end = min(size, offset + length)
            try:
                return os.pread(fd, max(0, end - offset), offset)
            except OSError:
                return None

    def has(self, oid: str, chunk: int) -> bool:
        return os.path.exists(self._path(oid, chunk))

    def _open(self, path: str) -> tuple[int, int] | None:
        with self._lock:
            got = self._fds.get(path)
            if got is not None:
                self._fds.move_to_end(path)
                return got
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            blob = os.pread(fd, CHUNK + TRAILER.size + 1, 0)
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            return None
        ok = len(blob) >= TRAILER.size
        if ok:
            crc, length = TRAILER.unpack_from(blob, len(blob) - TRAILER.size)
            ok = length == len(blob) - TRAILER.size and crc32c(blob[:length]) == crc
        if not ok:  # torn or damaged: never served, fetched again
            os.close(fd)
            self._remove(path)
            return None
        if time.time() - st.st_mtime > TOUCH_EVERY:
            try:
                os.utime(path)
            except OSError:
                pass
        with self._lock:
            self._fds[path] = (fd, length)
            while len(self._fds) > self.open_files:
                _, (old, _) = self._fds.popitem(last=False)
                os.close(old)  # reads pread under the same lock
        return fd, length

    @contextlib.contextmanager
    def fetching(self, oid: str, first: int, last: int, wait: float,
                 done: Callable[[], bool] | None = None) -> Iterator[bool]:
        """Hold the host-wide claim on chunks first..last of an object while fetching them.

        One process at a time fetches a chunk: another that needs it waits here, then
        finds it in the cache (the caller looks after entering). An open file description
        lock (a byte range of FETCH_LOCK per chunk) goes with its descriptor, so a killed
        holder frees it; a holder that does not finish within `wait` seconds (stopped,
        starved) is not waited for: the chunk is fetched twice, never served wrong; nor is
        one whose chunks another process has cached meanwhile (`done`, asked between tries).
        Yields whether the claim was taken."""
        base = int(oid[:10], 16) * SLOTS_PER_OBJECT
        start = base + min(first, SLOTS_PER_OBJECT - 1)
        length = min(last, SLOTS_PER_OBJECT - 1) - min(first, SLOTS_PER_OBJECT - 1) + 1
        try:
            fd = os.open(os.path.join(self.root, FETCH_LOCK),
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError:
            yield False  # a cache this process cannot lock: fetch without the claim
            return
        try:
            yield _lock_range(fd, start, length, wait, done)
        finally:
            os.close(fd)  # releases the lock

    def write(self, oid: str, chunk: int, data: bytes) -> None:
        """Store one whole chunk (best effort: a full or read-only cache only costs speed)."""
        path = self._path(oid, chunk)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(data + TRAILER.pack(crc32c(data), len(data)))
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.rename(tmp, path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return
        with self._lock:
            self._written += len(data)
            due = self._written >= SWEEP_EVERY_BYTES
            if due:
                self._written = 0
        if due:
            self.sweep()

    def _remove(self, path: str) -> None:
        with self._lock:
            got = self._fds.pop(path, None)
        if got is not None:
            os.close(got[0])
        try:
            os.unlink(path)
        except OSError:
            pass

    def sweep(self) -> int:
        """Evict least recently used chunks until the cache is under 90 % of its limit;
        returns the bytes removed. Skipped while another process sweeps."""
        try:
            lock = os.open(os.path.join(self.root, ".sweep.lock"),
                           os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            return 0
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return 0
            files: list[tuple[float, int, str]] = []
            total = 0
            for sub in os.scandir(self.root):
                if not sub.is_dir(follow_symlinks=False):
                    continue
                for f in os.scandir(sub.path):
                    try:
                        st = f.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    files.append((st.st_mtime, st.st_size, f.path))
                    total += st.st_size
            removed = 0
            if total > self.limit:
                target = int(self.limit * 0.9)
                for _, size, path in sorted(files):
                    if total - removed <= target:
                        break
                    self._remove(path)
                    removed += size
            return removed
        finally:
            os.close(lock)

    def close(self) -> None:
        with self._lock:
            for fd, _ in self._fds.values():
                os.close(fd)
            self._fds.clear()


def _lock_range(fd: int, start: int, length: int, wait: float,
                done: Callable[[], bool] | None) -> bool:
    """Take a write lock on bytes [start, start+length) of fd, polling up to `wait` s or
    until `done()`."""
    arg = FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
    deadline = time.monotonic() + wait
    delay = 0.002
    while True:
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, arg)
            return True
        except (BlockingIOError, PermissionError):  # held by another description
            if time.monotonic() >= deadline or (done is not None and done()):
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        except OSError:
            return False  # no locks here (a file system without them): fetch anyway
