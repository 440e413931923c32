"""The worker process: frames in on stdin, replies out on stdout.

The main thread reads a chunk of frames and handles each request right there
("inline"), appending its reply to a buffer that is written once the chunk is
done. Only an fsync that has to wait for the disk goes to a thread of the
pool, so a slow fsync of one file does not stall requests for others. Once an
inode has a request in the pool, its later requests queue behind it in that
inode's FIFO and the same thread runs them in arrival order.

Replies for one inode leave in the order its requests arrived: the buffered
inline replies are written before a request is handed to the pool, and a pool
thread writes its reply before it lets go of the inode's FIFO
(docs/CONTRACT.md, "worker replies").
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from pbkfs.fsutil import write_all
from pbkfs.ipc import protocol as P
from workers.handlers import Handlers

# Switches for measurements: handle requests in the reading thread when they cannot block
# long (default), and whether an fsync that must reach the disk may do so too.
INLINE = os.environ.get("PBKFS_WORKER_INLINE", "1") == "1"
FSYNC_INLINE = os.environ.get("PBKFS_FSYNC_INLINE", "0") == "1"


class Worker:
    def __init__(
        self, handlers: Handlers, rfd: int = 0, wfd: int = 1, threads: int = 8, index: int = 0
    ) -> None:
        self.handlers = handlers
        self.rfd = rfd
        self.wfd = wfd
        self.index = index
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pbkfs-io")
        self.requests = 0
        self.queues: dict[int, deque[P.Request]] = {}
        self.qlock = threading.Lock()
        self.wlock = threading.Lock()
        self.replies = bytearray()

    def send(self, msg: P.Msg) -> None:
        self.send_raw(P.encode(msg))

    def send_raw(self, data: bytes | bytearray) -> None:
        with self.wlock:
            write_all(self.wfd, data)

    def _drain(self, ino: int) -> None:
        while True:
            with self.qlock:
                q = self.queues[ino]
                if not q:
                    del self.queues[ino]
                    return
                req = q[0]
            reply = self.handlers.handle(req)
            with self.qlock:
                q.popleft()
            self.send(reply)

    def submit(self, req: P.Request) -> None:
        self.requests += 1  # work done, for the heap trimmer (pbkfs.memtrim)
        ino = getattr(req, "ino", 0)
        with self.qlock:
            q = self.queues.get(ino)
            if q is not None:
                q.append(req)
                return
            # A thread hand-off costs about as much as a pipe round trip: only an fsync
            # that has to wait for the disk goes to a thread (other inodes go on meanwhile).
            slow = isinstance(req, P.Fsync) and self.handlers.store.needs_sync(req.fid)
            if INLINE and (FSYNC_INLINE or not slow):
                inline = True
            else:
                inline = False
                self.queues[ino] = deque([req])
        if not inline:
            # Replies already decided (this inode's among them) leave before the thread's.
            self._flush_replies()
        if inline:
            # Nothing of this inode is queued: answer here, without a thread hand-off;
            # replies of one input chunk leave together (see run).
            P.encode_into(self.replies, self.handlers.handle(req))
            return
        self.pool.submit(self._drain, ino)

    def run(self) -> int:
        """Serve until Shutdown or end of input; returns the exit status."""
        buf = P.FrameBuffer()
        while True:
            try:
                chunk = os.read(self.rfd, 1 << 20)
            except InterruptedError:
                continue
            if not chunk:
                self._finish()
                return 0
            for body in buf.feed(chunk):
                req = P.request_decoder.decode(body)
                if isinstance(req, P.Shutdown):
                    self._flush_replies()
                    self._finish()
                    self.send(P.Done(req.rid))
                    return 0
                self.submit(req)
            self._flush_replies()

    def _flush_replies(self) -> None:
        if self.replies:
            data, self.replies = self.replies, bytearray()
            self.send_raw(data)

    def _finish(self) -> None:
        """Let every queued request finish, then make everything durable."""
        self.pool.shutdown(wait=True)
        store = self.handlers.store
        store.sync_all()
        store.close_all()


def log_line(index: int, msg: str) -> None:
    """Workers only log problems (failed requests, damaged maps)."""
    logging.getLogger(f"pbkfs.worker.{index}").error(msg)
