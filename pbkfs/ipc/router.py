"""The frontend's side of the worker processes: start them, route, match replies.

`submit(key, request)` sends to worker `key % N` over its stdin pipe. The key is
the inode for everything that must stay in order per inode (every request on a
file that has a diff object: its worker owns it); reads of a file never written
in this mount use `inode + (offset >> 20)`, so a large cold file is decoded by
every worker (`Vfs.read`). Replies come back on the worker's stdout pipe,
matched by request id, so any number of requests can be in flight. `submit`
enqueues synchronously (and usually writes the frame at once), so the order in
which the frontend decides operations on an inode is the order its worker
receives them: that is what makes per-inode FIFO hold end to end. A watchdog
kills a worker that leaves a request unanswered for `request_timeout`; a dead
worker's requests fail with EIO and a new process takes its place.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import msgspec
import trio

from pbkfs.config import REQUEST_TIMEOUT, CacheConfig, StoreConfig, worker_count
from pbkfs.ipc import protocol as P
from pbkfs.ipc.protocol import WorkerSpec
from pbkfs.view.source import SourceSpec

F_SETPIPE_SZ = 1031
MAX_RESTARTS_PER_MINUTE = 5  # restarts at once; past that, each waits (RESTART_BACKOFF_MAX)
RESTART_BACKOFF_MAX = 60.0  # seconds a worker that keeps dying waits before its next start
PIPE_SIZE = 1 << 20


def restart_delay(recent_restarts: int) -> float:
    """Seconds before a dead worker's replacement starts, given its restarts in the last
    minute: none for the first few, then doubling up to RESTART_BACKOFF_MAX."""
    over = recent_restarts - MAX_RESTARTS_PER_MINUTE
    return 0.0 if over < 0 else min(RESTART_BACKOFF_MAX, float(2 ** min(over + 1, 16)))


class WorkerDied(Exception):
    """A worker exited or closed its pipe."""


class Call:
    """One request in flight: awaited by a task, or completed through a callback."""

    __slots__ = ("event", "reply", "callback", "sent_at")

    def __init__(self, callback: Callable[[P.Reply], None] | None = None) -> None:
        self.event = trio.Event()
        self.reply: P.Reply | None = None
        self.callback = callback
        self.sent_at = time.monotonic()  # the watchdog's clock

    def complete(self, reply: P.Reply) -> None:
        self.reply = reply
        if self.callback is not None:
            self.callback(reply)
        self.event.set()

    async def wait(self) -> P.Reply:
        await self.event.wait()
        assert self.reply is not None
        return self.reply


class WorkerConn:
    """Pipes to one worker process."""

    def __init__(self, index: int, proc: subprocess.Popen[bytes]) -> None:
        self.index = index
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        self.wfd = os.dup(proc.stdin.fileno())
        self.rfd = os.dup(proc.stdout.fileno())
        proc.stdin.close()
        proc.stdout.close()
        for fd in (self.wfd, self.rfd):
            os.set_blocking(fd, False)
            try:
                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass
        self.out = bytearray()
        self.out_event = trio.Event()
        self.blocked = False  # the pipe was full at the last write
        self.pending: dict[int, Call] = {}
        self.alive = True
        self.ready = trio.Event()
        self.pid = proc.pid
        self.sent = 0

    def submit(
        self,
        rid: int,
        frame: bytes,
        callback: Callable[[P.Reply], None] | None = None,
        urgent: bool = True,
    ) -> Call:
        """Queue a frame; urgent ones (someone waits) are written at once with all before them.

        Non-urgent frames (write-behind) wait for the writer task, which sends
        everything queued by then in one system call: a burst of writeback
        becomes a few pipe writes instead of one per page.
        """
        if not self.alive:
            raise WorkerDied(f"worker {self.index} is not running")
        call = Call(callback)
        self.pending[rid] = call
        self.sent += 1
        self.out += frame
        if urgent and not self.blocked:
            self._flush()
        if self.out:
            self.out_event.set()
        return call

    def _flush(self) -> None:
        """Write as much of the queue as the pipe takes now."""
        try:
            n = os.write(self.wfd, self.out)
        except BlockingIOError:
            self.blocked = True
            return
        except OSError:
            self._die()
            return
        del self.out[:n]
        self.blocked = bool(self.out)

    async def writer(self) -> None:
        while self.alive:
            await self.out_event.wait()
            self.out_event = trio.Event()
            while self.out and self.alive:
                if self.blocked:
                    await trio.lowlevel.wait_writable(self.wfd)
                    self.blocked = False
                self._flush()

    async def reader(self, on_death: Callable[[WorkerConn], None]) -> None:
        buf = P.FrameBuffer()
        decode = P.reply_decoder.decode
        while True:
            await trio.lowlevel.wait_readable(self.rfd)
            try:
                chunk = os.read(self.rfd, 1 << 20)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                self._die()
                on_death(self)
                return
            for body in buf.feed(chunk):
                reply = decode(body)
                if isinstance(reply, P.Ready):
                    self.ready.set()
                    continue
                call = self.pending.pop(reply.rid, None)
                if call is not None:
                    call.complete(reply)

    def _die(self) -> None:
        if not self.alive:
            return
        self.alive = False
        pending, self.pending = self.pending, {}
        for rid, call in pending.items():
            call.complete(P.Err(rid, errno.EIO, f"worker {self.index} (pid {self.pid}) exited"))
        self.out_event.set()

    def close(self) -> None:
        for fd in (self.wfd, self.rfd):
            try:
                os.close(fd)
            except OSError:
                pass


class Router:
    """N workers; `submit(ino, req)` routes by inode."""

    def __init__(
        self,
        n: int,
        source: SourceSpec,
        objects: str,
        shm: str,
        threads: int = 8,
        log: Callable[[str], None] | None = None,
        stderr: int | None = None,
        log_format: str = "text",
        log_level: str = "info",
        caches: CacheConfig | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
        store: StoreConfig | None = None,
        layers: list[str] | None = None,
    ) -> None:
        self.n = worker_count(n)
        self.specs = [WorkerSpec(i, source, objects, shm, threads, log_format, log_level,
                                 caches or CacheConfig(), store or StoreConfig(),
                                 list(layers or []))
                      for i in range(n)]
        self.conns: list[WorkerConn] = []
        self._rid = 0
        self.log = log or (lambda _m: None)
        self.stderr = stderr
        self.stopping = False
        self.nursery: trio.Nursery | None = None
        self.on_restart: Callable[[int], None] | None = None
        self.restarts: list[list[float]] = [[] for _ in range(n)]  # times, per worker
        self.restarted = 0  # restarts since the start
        self.request_timeout = request_timeout

    def worker_of(self, ino: int) -> int:
        return ino % self.n

    def rid(self) -> int:
        self._rid += 1
        return self._rid

    def _spawn(self, spec: WorkerSpec) -> subprocess.Popen[bytes]:
        arg = msgspec.json.encode(spec).decode()
        return subprocess.Popen(
            [sys.executable, "-m", "workers", arg],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            close_fds=True,
            start_new_session=False,
        )

    async def start(self, nursery: trio.Nursery, timeout: float = 120.0, wait: bool = True
                    ) -> None:
        """Start every worker; with `wait`, until each has opened its view.

        Without waiting, requests sent meanwhile simply wait in the pipe until the
        worker reads them: the mount can answer names and attributes at once.
        """
        self.nursery = nursery
        for spec in self.specs:
            conn = WorkerConn(spec.index, self._spawn(spec))
            self.conns.append(conn)
            nursery.start_soon(conn.writer)
            nursery.start_soon(conn.reader, self._on_death)
        nursery.start_soon(self._watchdog)
        if not wait:
            return
        with trio.move_on_after(timeout) as scope:
            for conn in self.conns:
                while not conn.ready.is_set():
                    if not conn.alive:
                        raise WorkerDied(
                            f"worker {conn.index} exited during start-up "
                            f"(status {conn.proc.poll()}); see the log"
                        )
                    with trio.move_on_after(0.05):
                        await conn.ready.wait()
        if scope.cancelled_caught:
            raise WorkerDied(f"workers did not start within {timeout:.0f} s")

    async def _watchdog(self) -> None:
        """A worker that leaves a request unanswered for `request_timeout` is killed.

        Its death fails every request in flight with EIO and starts a new worker
        (as for any death), so a stopped or wedged worker never leaves a process
        in D state on the mount. Requests of one worker are answered in order per
        inode, not globally, so the oldest one in flight is the one to watch.
        """
        period = min(1.0, self.request_timeout / 4)
        while not self.stopping:
            await trio.sleep(period)
            now = time.monotonic()
            for conn in self.conns:
                if not conn.alive or not conn.pending:
                    continue
                oldest = min(c.sent_at for c in conn.pending.values())
                if now - oldest > self.request_timeout:
                    self.log(f"worker {conn.index} (pid {conn.pid}) left a request "
                             f"unanswered for {now - oldest:.0f} s; killing it")
                    try:
                        os.kill(conn.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    def _on_death(self, conn: WorkerConn) -> None:
        if self.stopping:
            return
        recent = [t for t in self.restarts[conn.index] if time.monotonic() - t < 60]
        self.restarts[conn.index] = recent
        if self.nursery is None:
            self._log_death(conn, None)
            return
        self.nursery.start_soon(self._after_death, conn, restart_delay(len(recent)))

    async def _after_death(self, conn: WorkerConn, delay: float) -> None:
        """Reap first, so the log names the real exit status; then replace the worker (a
        worker that keeps dying after a wait, meanwhile its inodes answer EIO: a crash
        loop does not spin, and a mount whose workers were killed (OOM) comes back)."""
        await trio.to_thread.run_sync(_reap, conn.proc)
        self._log_death(conn, delay)
        if delay:
            await trio.sleep(delay)
        await self._restart(conn)

    def _log_death(self, conn: WorkerConn, delay: float | None) -> None:
        self.log(f"worker {conn.index} (pid {conn.pid}) exited with status "
                 f"{conn.proc.poll()}; its requests in flight fail with EIO; "
                 + ("no new one (the mount is ending)" if delay is None
                    else "starting a new one from the diff on disk" if not delay
                    else f"it keeps dying: its inodes answer EIO until a new one starts "
                         f"in {delay:.0f} s"))

    async def _restart(self, old: WorkerConn) -> None:
        """A new process for a dead worker: it reopens its objects from the diff on disk."""
        self.restarts[old.index].append(time.monotonic())
        self.restarted += 1
        await trio.to_thread.run_sync(_reap, old.proc)
        old.close()
        if self.stopping or self.nursery is None:
            return
        new = WorkerConn(old.index, self._spawn(self.specs[old.index]))
        self.conns[old.index] = new
        self.nursery.start_soon(new.writer)
        self.nursery.start_soon(new.reader, self._on_death)
        if self.on_restart is not None:
            self.on_restart(old.index)

    def submit(
        self,
        ino: int,
        req: P.Msg,
        callback: Callable[[P.Reply], None] | None = None,
        urgent: bool = True,
    ) -> Call:
        """Queue in call order per inode; the reply wakes the waiter or runs `callback`."""
        conn = self.conns[ino % self.n]
        try:
            return conn.submit(req.rid, P.encode(req), callback, urgent)
        except WorkerDied as exc:
            call = Call(callback)
            call.complete(P.Err(req.rid, errno.EIO, str(exc)))
            return call

    async def shutdown(self, timeout: float = 600.0) -> bool:
        """Ask every worker to finish, sync and exit; wait for them.

        True if every worker confirmed (all it wrote is durable)."""
        self.stopping = True
        calls = []
        clean = True
        for conn in self.conns:
            if conn.alive:
                rid = self.rid()
                calls.append(conn.submit(rid, P.encode(P.Shutdown(rid))))
            else:
                clean = False
        confirmed = 0
        with trio.move_on_after(timeout):
            for c in calls:
                if isinstance(await c.wait(), P.Done):
                    confirmed += 1
        for conn in self.conns:
            await trio.to_thread.run_sync(_reap, conn.proc)
            conn._die()
            conn.close()
        return clean and confirmed == len(calls)

    def restart_count(self) -> int:
        """Workers restarted since the mount started (each lost what it had not synced)."""
        return self.restarted

    def pids(self) -> list[int]:
        return [c.pid for c in self.conns]


def _reap(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
