"""The namespace journal: an append-only log of name changes, plus snapshots.

Every change to the mounted namespace (create, mknod of a FIFO or socket,
unlink, rename, link, mkdir, rmdir, symlink, chmod/chown, binding a backup file
to a diff object) is one record appended with a single `write` before the
operation is answered, so a `kill -9` keeps exactly the operations that were
answered. A directory `fsync` (and a file `fsync` whose name records are not
yet durable) `fdatasync`s the log. Records are framed `length, crc32c,
msgpack`; replay stops at the first record that is short or fails its CRC,
which is exactly the prefix the log held, and the tail is cut off before new
records are appended.

A *snapshot* is the whole merged tree at one moment (written at a clean
unmount and after a recovery); generation g consists of `snapshot.<g>`
(absent for generation 0: the tree comes from the backup) and `journal.<g>`.
A new generation is made durable (write, fsync, rename, fsync directory)
before the old one is removed, so a crash at any point leaves one complete
generation.

Names are bytes to the kernel and `str` here: the FUSE adapter decodes them as
UTF-8 with surrogateescape, so a byte that is not UTF-8 is a lone surrogate
(b"\\xff" -> "\\udcff"), which msgpack cannot hold as a string. Any string of a
record or snapshot that is not valid UTF-8 (a name, a path, a symlink target)
is therefore stored as msgpack bin holding its bytes, and read back into the
same `str`; every other string is stored as msgpack str, as always. So every
diff written before still loads, and a diff without such names or FIFO/socket
nodes is written byte for byte as before (earlier versions can read it; one with
them, they cannot).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import struct
from collections.abc import Iterator
from typing import Any

import msgspec

from pbkfs.codecs.crc import crc32c
from pbkfs.fsutil import fsync_dir, name_bytes, name_str

_REC = struct.Struct("<II")  # length, crc32c


class Rec(msgspec.Struct, tag=True, array_like=True):
    """Base of journal records; paths are relative to the data directory root."""


class Mknode(Rec, tag="mk"):
    """A new file ('f', with its diff object), directory ('d'), symlink ('l'), FIFO ('p')
    or socket ('s'); `mode` holds the permission bits only."""

    path: str
    kind: str
    mode: int
    uid: int
    gid: int
    fid: int | None = None
    target: str = ""


class Remove(Rec, tag="rm"):
    """unlink or rmdir of a name."""

    path: str


class Rename(Rec, tag="mv"):
    """rename(src, dst), replacing dst if it exists."""

    src: str
    dst: str


class Link(Rec, tag="ln"):
    """A hard link dst to the file at src."""

    src: str
    dst: str


class Bind(Rec, tag="bind"):
    """The file at path (content from the backup) now has diff object fid."""

    path: str
    fid: int


class Chattr(Rec, tag="attr"):
    """chmod/chown of a name (None: unchanged)."""

    path: str
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None


Record = Mknode | Remove | Rename | Link | Bind | Chattr
_enc = msgspec.msgpack.Encoder()
_dec: msgspec.msgpack.Decoder[Record] = msgspec.msgpack.Decoder(Record)


class SnapNode(msgspec.Struct, array_like=True):
    """One object of the tree in a snapshot (shared by its hard links)."""

    key: int
    kind: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    origin: str | None = None
    fid: int | None = None
    target: str = ""
    size: int = 0


class Snapshot(msgspec.Struct):
    """The whole namespace: nodes and (path, node key) names in parent-first order."""

    generation: int
    next_fid: int
    nodes: list[SnapNode]
    names: list[tuple[str, int]]


def _to_wire(obj: Any) -> Any:
    """Builtins of a record or snapshot, each string that is not valid UTF-8 as its bytes."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return name_bytes(obj)
        return obj
    if isinstance(obj, (list, tuple)):
        return [_to_wire(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _to_wire(v) for k, v in obj.items()}
    return obj


def _from_wire(obj: Any) -> Any:
    """The inverse of `_to_wire` (records and snapshots hold no other bytes)."""
    if isinstance(obj, bytes):
        return name_str(obj)
    if isinstance(obj, list):
        return [_from_wire(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _from_wire(v) for k, v in obj.items()}
    return obj


def _encode(obj: msgspec.Struct) -> bytes:
    try:
        return _enc.encode(obj)
    except UnicodeEncodeError:  # it holds a name that is not UTF-8
        return _enc.encode(_to_wire(msgspec.to_builtins(obj)))


def encode_record(rec: Rec) -> bytes:
    body = _encode(rec)
    return _REC.pack(len(body), crc32c(body)) + body


def decode_record(body: bytes) -> Record:
    """One record; msgspec.DecodeError if it is not one."""
    try:
        return _dec.decode(body)
    except msgspec.ValidationError:  # bin where a str belongs: a name that is not UTF-8
        return msgspec.convert(_from_wire(msgspec.msgpack.decode(body)), Record)


def encode_snapshot(snap: Snapshot) -> bytes:
    return _encode(snap)


def decode_snapshot(data: bytes) -> Snapshot:
    try:
        return msgspec.msgpack.decode(data, type=Snapshot)
    except msgspec.ValidationError:  # names that are not UTF-8
        return msgspec.convert(_from_wire(msgspec.msgpack.decode(data)), Snapshot)


def read_records(data: bytes) -> tuple[list[Record], int]:
    """Records of a journal image and the length of its valid prefix."""
    out: list[Record] = []
    pos = 0
    while pos + _REC.size <= len(data):
        n, crc = _REC.unpack_from(data, pos)
        body = data[pos + _REC.size : pos + _REC.size + n]
        if len(body) != n or crc32c(body) != crc:
            break
        try:
            out.append(decode_record(body))
        except msgspec.DecodeError:
            break
        pos += _REC.size + n
    return out, pos


_GEN = re.compile(r"^(snapshot|journal)\.(\d+)$")


def read_generation(path: str, gen: int) -> tuple[Snapshot | None, list[Record], int]:
    """Snapshot, journal records and the journal's valid length of generation `gen` in `path`.

    Opens nothing for writing. A missing snapshot (gen > 0) raises FileNotFoundError;
    a missing journal reads as empty.
    """
    snap: Snapshot | None = None
    if gen:
        with open(os.path.join(path, f"snapshot.{gen}"), "rb") as f:
            snap = decode_snapshot(f.read())
    try:
        with open(os.path.join(path, f"journal.{gen}"), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        data = b""
    records, valid = read_records(data)
    return snap, records, valid


def generations(path: str) -> dict[int, set[str]]:
    """Generation -> the kinds ("snapshot", "journal") present in `path`."""
    gens: dict[int, set[str]] = {}
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(path):
            m = _GEN.match(name)
            if m:
                gens.setdefault(int(m.group(2)), set()).add(m.group(1))
    return gens


def latest_generation(path: str) -> int:
    """The newest complete generation in `path` (generation 0 needs no snapshot)."""
    complete = [g for g, kinds in generations(path).items() if g == 0 or "snapshot" in kinds]
    return max(complete, default=0)


class JournalDir:
    """The `ns/` directory of a diff: generations of snapshot + journal."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(path, mode=0o700, exist_ok=True)
        self.fd = -1
        self.offset = 0  # file position of the next record
        self.generation = 0
        self.appended = 0  # bytes appended since open
        self.synced = 0  # bytes known durable
        self.records = 0

    def _file(self, kind: str, gen: int) -> str:
        return os.path.join(self.path, f"{kind}.{gen}")

    def latest(self) -> int:
        """The newest complete generation (generation 0 needs no snapshot)."""
        return latest_generation(self.path)

    def load(self) -> tuple[Snapshot | None, list[Record]]:
        """Snapshot (None for generation 0) and the journal records of the newest generation."""
        gen = self.latest()
        self.generation = gen
        snap, records, valid = read_generation(self.path, gen)
        self._open_journal(gen, valid)
        self.records = len(records)
        return snap, records

    def _open_journal(self, gen: int, valid: int) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        path = self._file("journal", gen)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.ftruncate(self.fd, valid)  # cut a torn tail before appending
        os.lseek(self.fd, valid, os.SEEK_SET)
        self.offset = valid
        self.generation = gen
        self.appended = 0
        self.synced = 0

    def append(self, rec: Rec) -> int:
        """Append one record (one write); returns the journal position after it.

        A failed append (disk full) is cut off again, so later records still replay.
        """
        frame = encode_record(rec)
        try:
            n = os.write(self.fd, frame)
            if n != len(frame):
                raise OSError(errno.ENOSPC, f"short write to the namespace journal "
                              f"({n} of {len(frame)} bytes)")
        except OSError:
            os.ftruncate(self.fd, self.offset)
            os.lseek(self.fd, self.offset, os.SEEK_SET)
            raise
        self.offset += n
        self.appended += n
        self.records += 1
        return self.appended

    def sync(self) -> None:
        """fdatasync the journal if anything was appended since the last sync."""
        pos = self.appended
        if pos > self.synced:
            os.fdatasync(self.fd)
            self.synced = max(self.synced, pos)

    def write_snapshot(self, snap: Snapshot) -> None:
        """Start generation snap.generation from `snap`; old generations are removed after."""
        gen = snap.generation
        tmp = self._file("snapshot", gen) + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(encode_snapshot(snap))
            f.flush()
            os.fsync(f.fileno())
        # An empty journal for the new generation, then the snapshot under its final name.
        jfd = os.open(self._file("journal", gen), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fsync(jfd)
        os.close(jfd)
        os.rename(tmp, self._file("snapshot", gen))
        fsync_dir(self.path)
        self._open_journal(gen, 0)
        for g in generations(self.path):
            if g < gen:
                for kind in ("snapshot", "journal"):
                    try:
                        os.unlink(self._file(kind, g))
                    except FileNotFoundError:
                        pass
        fsync_dir(self.path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def iter_paths(path: str) -> Iterator[str]:
    """Components of a relative path."""
    return (p for p in path.split("/") if p)
