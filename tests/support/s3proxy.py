"""An HTTP/1.1 proxy that injects faults between an S3 client and the S3 server.

    with FaultProxy(s3.endpoint) as proxy:
        proxy.fail_rate, proxy.faults = 0.2, {"503", "reset"}
        ...  # a client configured with endpoint=proxy.endpoint

tc netem is not available here, so faults are made at the HTTP level, in a background thread
of the test process. The client talks to `endpoint` and signs for it; each request is forwarded
byte for byte (the Host header too: the SigV4 signature covers it) on that client
connection's own upstream connection, the whole answer is read, and only then the fault
decision applies to the answer. Every fault thus models a lost or garbled *answer*: the request
did reach the server (a PUT did write), the harder case for a client that retries.

Faults: "drop" (close without an answer), "reset" (RST), "500" / "503" (an S3 error document
instead of the answer, connection kept), "truncate" (the real status and headers, half the
body, then close), "stall" (hold the request `stall_seconds`, then close). `down = True`
closes the listening socket and every connection (connects are refused, as from a server
that went away); `down = False` listens again on the same port.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO

HOST = "127.0.0.1"
FAULTS = frozenset({"drop", "reset", "500", "503", "truncate", "stall"})
MAX_HEAD = 64 * 1024
ACCEPT_POLL = 0.2  # seconds; how fast an acceptor notices stop() or down
JOIN_TIMEOUT = 5.0
ERRORS = {
    "500": ("500 Internal Server Error", "InternalError",
            "We encountered an internal error. Please try again."),
    "503": ("503 Service Unavailable", "SlowDown", "Please reduce your request rate."),
}


class ProtocolError(Exception):
    """A message that is not HTTP/1.1 as this proxy understands it, or ends early."""


class UpstreamClosed(ProtocolError):
    """The upstream connection closed before the first byte of an answer."""


@dataclass
class Message:
    """One request or response: bytes as received (framing kept) and the parsed head."""

    head: bytes
    body: bytes
    start: str
    headers: dict[str, str]

    @property
    def method(self) -> str:
        return self.start.split(" ", 1)[0].upper()

    @property
    def status(self) -> int:
        return int(self.start.split(" ", 2)[1])

    def wants_close(self) -> bool:
        """Connection: close, or HTTP/1.0 without keep-alive."""
        conn = self.headers.get("connection", "").lower()
        http10 = "HTTP/1.0" in self.start.split()
        return "close" in conn or (http10 and "keep-alive" not in conn)


# -- HTTP/1.1 framing --------------------------------------------------------------------

def read_head(reader: BinaryIO) -> bytes | None:
    """The start line and headers through the blank line; None on EOF before a byte."""
    lines: list[bytes] = []
    total = 0
    while True:
        line = reader.readline(MAX_HEAD + 1)
        if not line:
            if lines:
                raise ProtocolError("connection closed inside a message head")
            return None
        if not lines and line in (b"\r\n", b"\n"):
            continue  # stray CRLF between keep-alive messages
        lines.append(line)
        total += len(line)
        if total > MAX_HEAD:
            raise ProtocolError("message head too large")
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)


def parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    """(start line, headers with lower-case names; repeated ones joined by ', ')."""
    lines = head.decode("latin-1").split("\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return lines[0].strip(), headers


def read_exact(reader: BinaryIO, n: int) -> bytes:
    data = reader.read(n)
    if len(data) != n:
        raise ProtocolError(f"connection closed after {len(data)} of {n} body bytes")
    return data


def read_chunked(reader: BinaryIO) -> bytes:
    """A chunked body, raw (sizes, data, trailers), through its final blank line."""
    parts: list[bytes] = []
    while True:
        line = reader.readline(4096)
        if not line.endswith(b"\n"):
            raise ProtocolError("bad or truncated chunk size line")
        parts.append(line)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as e:
            raise ProtocolError(f"bad chunk size {line!r}") from e
        if size == 0:
            break
        parts.append(read_exact(reader, size + 2))
    while True:  # trailers, then the blank line
        line = reader.readline(MAX_HEAD)
        if not line:
            raise ProtocolError("connection closed inside chunked trailers")
        parts.append(line)
        if line in (b"\r\n", b"\n"):
            return b"".join(parts)


def read_body(reader: BinaryIO, headers: dict[str, str], until_eof: bool) -> tuple[bytes, bool]:
    """(raw body, delimited by close); `until_eof` for a response without a length."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return read_chunked(reader), False
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError as e:
            raise ProtocolError(f"bad Content-Length {headers['content-length']!r}") from e
        return read_exact(reader, length), False
    if until_eof:
        return reader.read(), True
    return b"", False


def read_response(reader: BinaryIO, method: str) -> tuple[Message, bool]:
    """(final response, delimited by close), skipping 1xx interim answers."""
    while True:
        head = read_head(reader)
        if head is None:
            raise UpstreamClosed("upstream closed the connection")
        start, headers = parse_head(head)
        msg = Message(head, b"", start, headers)
        if not 100 <= msg.status < 200:
            break
    if method == "HEAD" or msg.status in (204, 304):
        return msg, False
    msg.body, by_close = read_body(reader, headers, until_eof=True)
    return msg, by_close


def error_response(kind: str, method: str) -> bytes:
    """An S3 error document as the server would send it (no body for HEAD)."""
    status, code, text = ERRORS[kind]
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{text}</Message><RequestId>fault-proxy</RequestId></Error>").encode()
    head = (f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nServer: FaultProxy\r\n\r\n").encode()
    return head if method == "HEAD" else head + body


# -- the proxy ---------------------------------------------------------------------------

def loopback_upstream(upstream: str) -> int:
    """The port of `upstream`, which must be http://127.0.0.1 (or localhost)."""
    url = urllib.parse.urlsplit(upstream)
    if url.scheme != "http" or url.hostname not in ("127.0.0.1", "localhost") or not url.port:
        raise ValueError(f"upstream must be http://127.0.0.1:PORT, not {upstream!r}")
    return url.port


ServeFn = Callable[[socket.socket], None]


class _Listener:
    """A listening socket and the thread accepting on it."""

    def __init__(self, port: int, serve: ServeFn) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, port))
        self.sock.listen(128)
        self.sock.settimeout(ACCEPT_POLL)
        self.port = int(self.sock.getsockname()[1])
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._accept, args=(serve,), daemon=True,
                                       name=f"fault-proxy-accept-{self.port}")
        self.thread.start()

    def _accept(self, serve: ServeFn) -> None:
        while not self.closing.is_set():
            try:
                client, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.closing.is_set():
                client.close()
                return
            serve(client)

    def close(self) -> None:
        self.closing.set()
        self.thread.join(JOIN_TIMEOUT)
        self.sock.close()


class FaultProxy:
    """A loopback HTTP/1.1 proxy to `upstream` with faults settable while it runs."""

    def __init__(self, upstream: str, *, seed: int | None = None, stall_seconds: float = 5.0,
                 upstream_timeout: float = 30.0, idle_timeout: float = 120.0) -> None:
        self.upstream = upstream
        self.upstream_port = loopback_upstream(upstream)
        self.upstream_timeout = upstream_timeout
        self.idle_timeout = idle_timeout
        self._lock = threading.Lock()  # settings, counters, random
        self._life = threading.RLock()  # start, stop, down
        self._latency = 0.0
        self._fail_rate = 0.0
        self._faults: frozenset[str] = frozenset()
        self._stall_seconds = stall_seconds
        self._seed = seed
        self._rng = random.Random(seed)
        self._down = False
        self._requests = 0
        self._faulted = 0
        self._port = 0
        self._listener: _Listener | None = None
        self._stopping = threading.Event()
        self._socks: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()

    # -- settings (thread-safe) ----------------------------------------------------------

    @property
    def latency(self) -> float:
        with self._lock:
            return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        with self._lock:
            self._latency = float(seconds)

    @property
    def fail_rate(self) -> float:
        with self._lock:
            return self._fail_rate

    @fail_rate.setter
    def fail_rate(self, rate: float) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError("fail_rate must be in [0, 1]")
        with self._lock:
            self._fail_rate = float(rate)

    @property
    def faults(self) -> frozenset[str]:
        with self._lock:
            return self._faults

    @faults.setter
    def faults(self, kinds: set[str] | frozenset[str] | list[str] | tuple[str, ...]) -> None:
        unknown = set(kinds) - FAULTS
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {sorted(FAULTS)}")
        with self._lock:
            self._faults = frozenset(kinds)

    @property
    def stall_seconds(self) -> float:
        with self._lock:
            return self._stall_seconds

    @stall_seconds.setter
    def stall_seconds(self, seconds: float) -> None:
        with self._lock:
            self._stall_seconds = float(seconds)

    @property
    def seed(self) -> int | None:
        with self._lock:
            return self._seed

    @seed.setter
    def seed(self, seed: int | None) -> None:
        """Reseed: the same seed and the same request order give the same faults."""
        with self._lock:
            self._seed = seed
            self._rng = random.Random(seed)

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    @property
    def faulted(self) -> int:
        with self._lock:
            return self._faulted

    @property
    def down(self) -> bool:
        with self._lock:
            return self._down

    @down.setter
    def down(self, value: bool) -> None:
        with self._life:
            with self._lock:
                changed, self._down = self._down != value, value
            if not changed or self._port == 0 or self._stopping.is_set():
                return
            if value:
                self._close_listener()
                self._cut_all()
            else:
                self._listener = _Listener(self._port, self._spawn)

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint(self) -> str:
        if not self._port:
            raise RuntimeError("FaultProxy not started")
        return f"http://{HOST}:{self._port}"

    def start(self) -> FaultProxy:
        with self._life:
            if self._port:
                raise RuntimeError("FaultProxy already started")
            self._listener = _Listener(0, self._spawn)
            self._port = self._listener.port
            if self.down:
                self._close_listener()
        return self

    def stop(self) -> None:
        """Close the listener and every connection; join the threads (bounded)."""
        with self._life:
            self._stopping.set()
            self._close_listener()
            self._cut_all()
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(JOIN_TIMEOUT)

    def __enter__(self) -> FaultProxy:
        return self if self._port else self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def _cut_all(self) -> None:
        """Shut every open socket down: blocked reads in the handlers return at once."""
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.add(sock)

    def _forget(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._socks.discard(sock)
        sock.close()

    def _spawn(self, client: socket.socket) -> None:
        t = threading.Thread(target=self._serve, args=(client,), daemon=True,
                             name=f"fault-proxy-{self._port}")
        with self._lock:
            self._threads = {x for x in self._threads if x.is_alive()}
            self._threads.add(t)
        t.start()

    # -- one client connection -----------------------------------------------------------

    def _decide(self) -> str | None:
        """Count a request; the fault to inject into its answer, or None."""
        with self._lock:
            self._requests += 1
            if not self._faults or self._rng.random() >= self._fail_rate:
                return None
            self._faulted += 1
            return self._rng.choice(sorted(self._faults))

    def _serve(self, client: socket.socket) -> None:
        self._track(client)
        client.settimeout(self.idle_timeout)
        conn = _Upstream(self)
        reader = client.makefile("rb")
        try:
            while not self._stopping.is_set() and not self.down:
                request = self._read_request(client, reader)
                if request is None or self._stopping.is_set() or self.down:
                    return
                if not self._answer(client, conn, request):
                    return
        except (OSError, ProtocolError):
            return
        finally:
            conn.close()
            reader.close()  # the descriptor closes (FIN, or RST after SO_LINGER 0) with both
            self._forget(client)

    def _read_request(self, client: socket.socket, reader: BinaryIO) -> Message | None:
        head = read_head(reader)
        if head is None:
            return None
        start, headers = parse_head(head)
        if headers.get("expect", "").lower() == "100-continue":
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # the client may send the body
        body, _ = read_body(reader, headers, until_eof=False)
        return Message(head, body, start, headers)

    def _answer(self, client: socket.socket, conn: _Upstream, request: Message) -> bool:
        """Forward one request and answer it, faulted or not; False: close the client."""
        fault = self._decide()
        latency = self.latency
        if latency and self._stopping.wait(latency):
            return False
        response, by_close = conn.exchange(request)
        if fault is not None:
            return self._inject(fault, client, request, response)
        client.sendall(response.head + response.body)
        return not (by_close or response.wants_close() or request.wants_close())

    def _inject(self, fault: str, client: socket.socket, request: Message,
                response: Message) -> bool:
        """Answer with `fault` instead of `response`; False: close the client."""
        if fault in ERRORS:
            client.sendall(error_response(fault, request.method))
            return not request.wants_close()
        if fault == "reset":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif fault == "truncate":
            body = response.body
            cut = response.head + body[: len(body) // 2] if body else \
                response.head[: len(response.head) // 2]
            client.sendall(cut)
        elif fault == "stall":
            self._stopping.wait(self.stall_seconds)
        return False


class _Upstream:
    """The upstream connection of one client connection, reopened when it went stale."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.sock: socket.socket | None = None
        self.reader: BinaryIO | None = None

    def _connect(self) -> tuple[socket.socket, BinaryIO]:
        sock = socket.create_connection((HOST, self.proxy.upstream_port),
                                        timeout=self.proxy.upstream_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.proxy._track(sock)
        self.sock, self.reader = sock, sock.makefile("rb")
        return self.sock, self.reader

    def exchange(self, request: Message) -> tuple[Message, bool]:
        """Send `request`, read the whole answer; retry once on a stale kept-alive socket."""
        reused = self.sock is not None
        while True:
            if self.sock is None or self.reader is None:
                sock, reader = self._connect()
            else:
                sock, reader = self.sock, self.reader
            try:
                sock.sendall(request.head + request.body)
                response, by_close = read_response(reader, request.method)
            except (UpstreamClosed, BrokenPipeError, ConnectionResetError):
                self.close()
                if not reused:
                    raise
                reused = False
                continue
            except BaseException:
                self.close()
                raise
            if by_close or response.wants_close():
                self.close()
            return response, by_close

    def close(self) -> None:
        sock, reader, self.sock, self.reader = self.sock, self.reader, None, None
        if reader is not None:
            reader.close()
        self.proxy._forget(sock)
