"""Frames between the frontend and its workers: msgspec Structs over pipes.

Every request names the inode it belongs to (the worker keeps one FIFO per
inode, so order per inode is the order the frontend sent) and carries a request
id, so many requests can be in flight on one pipe and replies may come back in
any order. A frame is a 4-byte little-endian length followed by the msgpack
encoding of one tagged Struct.
"""

from __future__ import annotations

import struct

import msgspec

from pbkfs.config import CacheConfig, StoreConfig
from pbkfs.view.source import SourceSpec

LEN = struct.Struct("<I")
MAX_FRAME = 64 << 20


class Msg(msgspec.Struct, tag=True, array_like=True):
    """Base of every frame."""

    rid: int


# ---- requests (frontend -> worker) -------------------------------------------


class Read(Msg, tag="read"):
    """Read `length` bytes at `off` of an object whose logical size is `size`.

    `fid` is None for a file that still lives only in the backup (read `origin`
    from the chain); `origin` is None for a file created in the mount.
    """

    ino: int
    fid: int | None
    origin: str | None
    size: int
    off: int
    length: int


class Write(Msg, tag="write"):
    """Write `data` at `off`; creates the object's diff files on first use."""

    ino: int
    fid: int
    origin: str | None
    off: int
    data: bytes


class Truncate(Msg, tag="truncate"):
    """Set the logical size; lowering it below the backup's data sets the horizon."""

    ino: int
    fid: int
    origin: str | None
    size: int


class Fsync(Msg, tag="fsync"):
    """Make every earlier write/truncate of the object durable (data, size, block map)."""

    ino: int
    fid: int
    datasync: bool


class Remove(Msg, tag="remove"):
    """The object is gone from the namespace and no longer open: delete its diff files."""

    ino: int
    fid: int


class Shutdown(Msg, tag="shutdown"):
    """Finish every queued request, fsync every object touched, then exit."""


# ---- replies (worker -> frontend) --------------------------------------------


class Ready(Msg, tag="ready"):
    """Sent once by a worker when its view is open and it accepts requests (rid 0)."""

    pid: int
    worker: int


class Data(Msg, tag="data"):
    """Bytes of a Read; `slot` as in Done (the object's shared-memory entry, -1: none), so
    after a remount or a worker restart the first read of an object teaches the frontend
    where its bits are and later reads of its diff blocks need no worker."""

    data: bytes
    slot: int = -1


class Done(Msg, tag="done"):
    """A write/truncate/fsync/remove finished; `size` is the object's size afterwards.

    `slot` is the object's entry in the worker's shared-memory block-map table
    (-1: none), so the frontend can check materialized blocks without asking.
    """

    size: int = -1
    slot: int = -1


class Err(Msg, tag="err"):
    """A request failed: the errno to return to the kernel and why."""

    errno: int
    message: str


Request = Read | Write | Truncate | Fsync | Remove | Shutdown
Reply = Ready | Data | Done | Err

_encoder = msgspec.msgpack.Encoder()
request_decoder: msgspec.msgpack.Decoder[Request] = msgspec.msgpack.Decoder(Request)
reply_decoder: msgspec.msgpack.Decoder[Reply] = msgspec.msgpack.Decoder(Reply)


def encode(msg: Msg) -> bytes:
    """One length-prefixed frame."""
    body = _encoder.encode(msg)
    return LEN.pack(len(body)) + body


def encode_into(buf: bytearray, msg: Msg) -> None:
    """Append one frame to `buf`, encoded in place: a read's data is copied once, not into
    a body and then into a frame and then into the buffer."""
    start = len(buf)
    buf += bytes(LEN.size)
    _encoder.encode_into(msg, buf, start + LEN.size)
    LEN.pack_into(buf, start, len(buf) - start - LEN.size)


class FrameBuffer:
    """Accumulates bytes from a pipe and yields complete frame bodies.

    Frames that lie whole in the chunk just read (the common case) are handed out as
    views of it (a chunk of bytes never changes, so a view stays valid); only a frame that
    spans reads is copied out of the buffer that joins them.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[bytes | memoryview]:
        out: list[bytes | memoryview] = []
        pos = 0
        if self._buf:
            buf = self._buf
            buf += chunk
            while len(buf) - pos >= 4:
                n = self._length(buf, pos)
                if len(buf) - pos - 4 < n:
                    break
                out.append(bytes(memoryview(buf)[pos + 4 : pos + 4 + n]))
                pos += 4 + n
            del buf[:pos]
            return out
        view = memoryview(chunk)
        while len(chunk) - pos >= 4:
            n = self._length(chunk, pos)
            if len(chunk) - pos - 4 < n:
                break
            out.append(view[pos + 4 : pos + 4 + n])
            pos += 4 + n
        if pos < len(chunk):
            self._buf += view[pos:]
        return out

    @staticmethod
    def _length(data: bytes | bytearray, pos: int) -> int:
        (n,) = LEN.unpack_from(data, pos)
        if n > MAX_FRAME:
            raise ValueError(f"frame of {n} bytes exceeds the {MAX_FRAME} limit")
        return int(n)


class WorkerSpec(msgspec.Struct):
    """Everything a worker needs, passed as one JSON argument."""

    index: int
    source: SourceSpec
    objects: str
    shm: str
    threads: int = 8
    log_format: str = "text"
    log_level: str = "info"
    caches: CacheConfig = msgspec.field(default_factory=CacheConfig)  # of the worker's view
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)  # s3:// catalogs
    layers: list[str] = msgspec.field(default_factory=list)  # a branch's ancestors' objects/
