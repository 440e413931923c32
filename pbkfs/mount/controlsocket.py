"""The control socket of a live mount: current figures on request (for `pbkfs stat`).

A Unix socket next to the mount's runtime record, mode 0600. A client sends one
JSON line (`{"cmd": "stat"}` or `{"cmd": "stat", "reset": true}`) and reads one JSON
line back; the numbers are taken at that moment from the running processes, never
from a file that may be stale.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from typing import Any

import trio

MAX_REQUEST = 64 * 1024


class Latency:
    """Per-operation count, total and a power-of-two histogram of microseconds."""

    __slots__ = ("count", "total_ns", "buckets")

    def __init__(self) -> None:
        self.count = 0
        self.total_ns = 0
        self.buckets = [0] * 40

    def add(self, ns: int) -> None:
        self.count += 1
        self.total_ns += ns
        self.buckets[min((ns // 1000).bit_length(), 39)] += 1

    def quantile(self, q: float) -> float:
        """Upper bound (µs) of the bucket holding quantile q."""
        if not self.count:
            return 0.0
        want = q * self.count
        seen = 0
        for i, n in enumerate(self.buckets):
            seen += n
            if seen >= want:
                return float((1 << i) if i else 1)
        return float(1 << 39)

    def summary(self) -> dict[str, float]:
        return {
            "count": self.count,
            "mean_us": round(self.total_ns / self.count / 1000, 1) if self.count else 0.0,
            "p50_us": self.quantile(0.5),
            "p99_us": self.quantile(0.99),
        }


async def serve(path: str, answer: Callable[[dict[str, Any]], dict[str, Any]],
                *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve requests on `path` until cancelled (the socket file is removed at the end).

    Started with `nursery.start`: it reports once the socket listens, so a `pbkfs stat`
    right after `pbkfs mount` returned finds it."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        await sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(8)
    listener = trio.SocketListener(sock)
    task_status.started()
    try:
        async with trio.open_nursery() as nursery:
            while True:
                stream = await listener.accept()
                nursery.start_soon(_handle, stream, answer)
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        with trio.CancelScope(shield=True):
            await listener.aclose()


async def _handle(stream: trio.abc.Stream, answer: Callable[[dict[str, Any]], dict[str, Any]]
                  ) -> None:
    async with stream:
        buf = b""
        with trio.move_on_after(10):
            while b"\n" not in buf and len(buf) < MAX_REQUEST:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                buf += chunk
        try:
            request = json.loads(buf.decode() or "{}")
            reply = answer(request)
        except Exception as exc:  # noqa: BLE001 - a bad request gets an error reply
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        await stream.send_all((json.dumps(reply) + "\n").encode())


def query(path: str, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Client side: one request, one reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall((json.dumps(request) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    reply = json.loads(data.decode())
    if not isinstance(reply, dict):
        raise ValueError(f"{path}: unexpected reply {reply!r}")
    return reply
