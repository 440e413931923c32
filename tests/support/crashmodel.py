"""Crash-state exploration of a diff directory, in the manner of ALICE and CrashMonkey.

`Recorder` intercepts the `os` calls pbkfs makes (open, pwrite, write,
ftruncate, truncate, fsync, fdatasync, unlink, rename, replace, mkdir, close,
fdopen) while a workload runs in this process, lets each real call happen, and
logs a logical operation for paths under the diff root. `explore` then
builds, for every sync point, the states the weakest Linux/POSIX model allows
(docs/CONTRACT.md, "the diff on disk"):

* a file's data operations (writes, cut into 4 KiB-aligned pieces, and
  truncates) persist in any subset until an fsync/fdatasync of that file,
  which forces every earlier one;
* directory operations (create, unlink, rename, mkdir) persist in any subset
  until an fsync of their directory (a rename, atomic, is forced by either of
  its two directories);
* kept operations apply in their original order to the image taken before
  the workload.

`History` is the oracle: what the application saw (file contents after each
change, name states after each name change) and what an fsync that had
returned made durable; `check_content` says whether a recovered file is a
state the promise allows.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import threading
from collections.abc import Callable, Iterator
from typing import Any

PIECE = 4096
# ("w", ino, off, data), ("t", ino, size), ("s", ino), ("d", dirs, changes), ("m", marker)
Entry = tuple[Any, ...]


class _RecFile:
    """What `os.fdopen(fd, "wb")` returns while recording: writes go through `os.write`."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        return len(data)

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> _RecFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Recorder:
    """Image of the tree under `root`, then a log of what the workload did to it."""

    PATCHED = ("open", "pwrite", "write", "ftruncate", "truncate", "fsync", "fdatasync",
               "unlink", "rename", "replace", "mkdir", "close", "fdopen")

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.log: list[Entry] = []
        self.kind: dict[int, str] = {}  # inode -> "f" / "d"; inode 0 is the root
        self.init: dict[int, bytes] = {}  # content of each file of the image
        self.entries0: dict[tuple[int, str], int] = {}  # (directory, name) -> inode
        self.paths: dict[str, int] = {}  # the live tree: path -> inode
        self.fds: dict[int, int] = {}
        self.name_of: dict[int, str] = {}  # inode -> its newest path (for reports)
        self.lock = threading.RLock()
        self.orig = {name: getattr(os, name) for name in self.PATCHED}
        self.paths[self.root] = self._new("d")
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in sorted(dirnames) + sorted(filenames):
                p = os.path.join(dirpath, name)
                ino = self._named(p, self._new("d" if name in dirnames else "f"))
                self.entries0[(self.paths[dirpath], name)] = ino
                if name in filenames:
                    with open(p, "rb") as f:
                        self.init[ino] = f.read()

    def _new(self, kind: str) -> int:
        ino = len(self.kind)
        self.kind[ino] = kind
        return ino

    def _named(self, p: str, ino: int) -> int:
        self.paths[p] = ino
        self.name_of[ino] = os.path.relpath(p, self.root)
        return ino

    @contextlib.contextmanager
    def recording(self) -> Iterator[Recorder]:
        for name in self.PATCHED:
            setattr(os, name, getattr(self, "_" + name))
        try:
            yield self
        finally:
            for name, fn in self.orig.items():
                setattr(os, name, fn)

    def mark(self, payload: tuple[Any, ...]) -> None:
        with self.lock:
            self.log.append(("m", payload))

    # -- helpers ------------------------------------------------------------------------

    def _under(self, path: Any) -> str | None:
        if isinstance(path, int):
            return None
        p = os.path.abspath(os.fsdecode(os.fspath(path)))
        return p if p == self.root or p.startswith(self.root + os.sep) else None

    def _slot(self, p: str) -> tuple[int, str]:
        return self.paths[os.path.dirname(p)], os.path.basename(p)

    def _dirop(self, *sets: tuple[str, int | None]) -> None:
        changes = tuple(self._slot(p) + (ino,) for p, ino in sets)
        self.log.append(("d", frozenset(c[0] for c in changes), changes))

    def _data(self, fd: int, off: int, data: bytes | memoryview) -> None:
        ino = self.fds[fd]
        pos = 0
        while pos < len(data):
            end = min(len(data), ((off + pos) // PIECE + 1) * PIECE - off)
            self.log.append(("w", ino, off + pos, bytes(data[pos:end])))
            pos = end

    # -- the patched calls -------------------------------------------------------------------

    def _open(self, path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        p = self._under(path) if dir_fd is None else None
        if p is None:
            fd = self.orig["open"](path, flags, mode, dir_fd=dir_fd)
            self.fds.pop(fd, None)
            return fd
        with self.lock:
            ino = self.paths.get(p)
            fd = self.orig["open"](p, flags, mode)
            if ino is None:
                assert flags & os.O_CREAT, f"{p}: a file the recorder never saw"
                ino = self._named(p, self._new("f"))
                self._dirop((p, ino))
            elif flags & os.O_TRUNC and self.kind[ino] == "f":
                self.log.append(("t", ino, 0))
            self.fds[fd] = ino
            return fd

    def _pwrite(self, fd: int, data: Any, off: int) -> int:
        with self.lock:
            n: int = self.orig["pwrite"](fd, data, off)
            if fd in self.fds:
                self._data(fd, off, memoryview(data)[:n])
            return n

    def _write(self, fd: int, data: Any) -> int:
        with self.lock:
            if fd not in self.fds:
                return int(self.orig["write"](fd, data))
            off = os.lseek(fd, 0, os.SEEK_CUR)
            n: int = self.orig["write"](fd, data)
            self._data(fd, off, memoryview(data)[:n])
            return n

    def _ftruncate(self, fd: int, size: int) -> None:
        with self.lock:
            self.orig["ftruncate"](fd, size)
            if fd in self.fds:
                self.log.append(("t", self.fds[fd], size))

    def _truncate(self, path: Any, size: int) -> None:
        if isinstance(path, int):
            return self._ftruncate(path, size)
        with self.lock:
            self.orig["truncate"](path, size)
            p = self._under(path)
            if p is not None:
                self.log.append(("t", self.paths[p], size))

    def _fsync(self, fd: Any, name: str = "fsync") -> None:
        fd = fd if isinstance(fd, int) else fd.fileno()
        with self.lock:
            self.orig[name](fd)  # a failed sync forces nothing
            if fd in self.fds:
                self.log.append(("s", self.fds[fd]))

    def _fdatasync(self, fd: Any) -> None:
        self._fsync(fd, "fdatasync")

    def _unlink(self, path: Any, *, dir_fd: int | None = None) -> None:
        with self.lock:
            self.orig["unlink"](path, dir_fd=dir_fd)
            p = self._under(path) if dir_fd is None else None
            if p is not None:
                self._dirop((p, None))
                del self.paths[p]

    def _rename(self, src: Any, dst: Any, name: str = "rename", **kw: Any) -> None:
        with self.lock:
            self.orig[name](src, dst, **kw)
            s, d = self._under(src), self._under(dst)
            if s is None and d is None:
                return
            assert s is not None and d is not None and not kw, "rename across the diff root"
            ino = self.paths.pop(s)
            assert self.kind[ino] == "f", "directory renames are not modelled"
            self._dirop((s, None), (d, ino))
            self._named(d, ino)

    def _replace(self, src: Any, dst: Any, **kw: Any) -> None:
        self._rename(src, dst, "replace", **kw)

    def _mkdir(self, path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        with self.lock:
            self.orig["mkdir"](path, mode, dir_fd=dir_fd)
            p = self._under(path) if dir_fd is None else None
            if p is not None:
                ino = self._named(p, self._new("d"))
                self._dirop((p, ino))

    def _close(self, fd: int) -> None:
        with self.lock:
            self.fds.pop(fd, None)
            self.orig["close"](fd)

    def _fdopen(self, fd: int, mode: str = "r", *args: Any, **kw: Any) -> Any:
        if fd in self.fds and any(c in mode for c in "wa+"):
            return _RecFile(fd)
        return self.orig["fdopen"](fd, mode, *args, **kw)


# -- crash states -----------------------------------------------------------------------------

def crash_points(log: list[Entry]) -> list[int]:
    """Log positions to crash at: just before and just after every sync, and the end.

    "After" includes the end markers that directly follow, so the sync counts as returned.
    """
    points = {len(log)}
    for i, e in enumerate(log):
        if e[0] == "s":
            points.add(i)
            j = i + 1
            while j < len(log) and log[j][0] == "m" and log[j][1][0] == "end":
                j += 1
            points.add(j)
    return sorted(points)


def droppable(rec: Recorder, k: int) -> list[int]:
    """Positions before k of operations no sync before k has forced."""
    data: dict[int, list[int]] = {}
    dirs: dict[int, set[int]] = {}
    for i, e in enumerate(rec.log[:k]):
        if e[0] in ("w", "t"):
            data.setdefault(e[1], []).append(i)
        elif e[0] == "d":
            for d in e[1]:
                dirs.setdefault(d, set()).add(i)
        elif e[0] == "s":
            if rec.kind[e[1]] == "f":
                data.pop(e[1], None)
            else:
                for j in dirs.pop(e[1], set()):
                    for d in rec.log[j][1]:
                        dirs.get(d, set()).discard(j)
    free = {i for ops in data.values() for i in ops} | {i for ops in dirs.values() for i in ops}
    return sorted(free)


def subsets(free: list[int], rng: random.Random, n_random: int, each_one: int,
            exhaustive: int) -> list[frozenset[int]]:
    """Dropped sets: every subset when at most `exhaustive` operations may be lost; else
    none, all, each one alone and all but each one (up to `each_one`), and random ones."""
    every = frozenset(free)
    if len(free) <= exhaustive:
        return [frozenset(i for j, i in enumerate(free) if m >> j & 1)
                for m in range(1 << len(free))]
    out = {frozenset(), every}
    if len(free) <= each_one:
        out.update(frozenset([i]) for i in free)
        out.update(every - {i} for i in free)
    for _ in range(n_random):
        p = rng.random()
        out.add(frozenset(i for i in free if rng.random() < p))
    return sorted(out, key=lambda s: (len(s), sorted(s)))


def materialize(rec: Recorder, k: int, dropped: frozenset[int], dest: str) -> None:
    """Write the tree a crash at k leaves when the operations in `dropped` were lost."""
    content: dict[int, bytearray] = {}
    entries = dict(rec.entries0)

    def buf(ino: int) -> bytearray:
        b = content.get(ino)
        if b is None:
            b = content[ino] = bytearray(rec.init.get(ino, b""))
        return b

    for i, e in enumerate(rec.log[:k]):
        if i in dropped:
            continue
        if e[0] == "w":
            b, off, data = buf(e[1]), e[2], e[3]
            if off > len(b):
                b.extend(bytes(off - len(b)))
            b[off : off + len(data)] = data
        elif e[0] == "t":
            b, size = buf(e[1]), e[2]
            del b[size:]
            b.extend(bytes(size - len(b)))
        elif e[0] == "d":
            for d, name, ino in e[2]:
                if ino is None:
                    entries.pop((d, name), None)
                else:
                    entries[(d, name)] = ino
    children: dict[int, list[tuple[str, int]]] = {}
    for (d, name), ino in sorted(entries.items()):
        children.setdefault(d, []).append((name, ino))
    written: dict[int, str] = {}

    def build(d: int, path: str) -> None:
        for name, ino in children.get(d, []):
            p = os.path.join(path, name)
            if rec.kind[ino] == "d":
                os.mkdir(p)
                build(ino, p)
            elif ino in written:
                os.link(written[ino], p)
            else:
                with open(p, "wb") as f:
                    f.write(content[ino] if ino in content else rec.init.get(ino, b""))
                written[ino] = p

    os.makedirs(dest)
    build(0, dest)


# -- the oracle -------------------------------------------------------------------------------

class History:
    """What the application did and saw, in the order it did it.

    Events: ("data", F, v) F became its version v; ("name", n) the names became
    state n; ("fsync", F, v, n) F is durable at version v and names up to n;
    ("dirsync", n) names durable up to state n. Each event is bracketed in the
    recorder's log by ("begin", e) and ("end", e) markers.
    """

    def __init__(self, rec: Recorder, names: dict[str, str] | None = None) -> None:
        self.rec = rec
        self.versions: dict[str, list[bytes]] = {}
        self.names: list[dict[str, str]] = [dict(names or {})]
        self.events: list[tuple[Any, ...]] = []

    @contextlib.contextmanager
    def op(self, *event: Any) -> Iterator[None]:
        e = len(self.events)
        self.events.append(event)
        self.rec.mark(("begin", e))
        yield
        self.rec.mark(("end", e))

    def content(self, f: str) -> bytes:
        return self.versions[f][-1]

    def change(self, f: str, new: bytes) -> Any:
        self.versions[f].append(new)
        return self.op("data", f, len(self.versions[f]) - 1)

    def rename_names(self, new: dict[str, str]) -> Any:
        self.names.append(new)
        return self.op("name", len(self.names) - 1)

    def window(self, k: int) -> tuple[dict[str, list[bytes]], list[dict[str, str]]]:
        """For a crash at k: the versions each file may show, and the name states allowed."""
        started: set[int] = set()
        ended: set[int] = set()
        for e in self.rec.log[:k]:
            if e[0] == "m":
                (started if e[1][0] == "begin" else ended).add(e[1][1])
        vdur: dict[str, int] = {}
        vmax: dict[str, int] = {}
        ndur = nmax = 0
        for i in sorted(started):
            ev = self.events[i]
            if ev[0] == "data":
                vmax[ev[1]] = max(vmax.get(ev[1], 0), ev[2])
            elif ev[0] == "name":
                nmax = max(nmax, ev[1])
            elif i in ended and ev[0] == "fsync":
                vdur[ev[1]] = max(vdur.get(ev[1], 0), ev[2])
                ndur = max(ndur, ev[3])
            elif i in ended and ev[0] == "dirsync":
                ndur = max(ndur, ev[1])
        files = {f: v[vdur.get(f, 0) : max(vmax.get(f, 0), vdur.get(f, 0)) + 1]
                 for f, v in self.versions.items()}
        return files, self.names[ndur : max(nmax, ndur) + 1]


def check_content(got: bytes, window: list[bytes]) -> str | None:
    """None if `got` is allowed after a crash whose last durable version is window[0].

    Every byte must be the byte of some version in the window, or zero where the file
    was extended (beyond the end of an earlier version, within a later one); the size
    must be a version's size, or a 4 KiB boundary inside such an extension (a torn
    extending write).
    """
    zero: list[tuple[int, int]] = []
    low = len(window[0])
    for v in window[1:]:
        if low < len(v):
            zero.append((low, len(v)))
        low = min(low, len(v))
    n = len(got)
    if n not in {len(v) for v in window} and not (
        n % PIECE == 0 and any(a < n < b for a, b in zero)
    ):
        return f"size {n}, versions since the last fsync have sizes {[len(v) for v in window]}"

    def bad(a: int, b: int) -> int | None:
        seg = got[a:b]
        if any(len(v) >= b and v[a:b] == seg for v in window):
            return None
        if not seg.strip(b"\0") and any(lo <= a and b <= hi for lo, hi in zero):
            return None
        if b - a > 16:
            m = (a + b) // 2
            first = bad(a, m)
            return first if first is not None else bad(m, b)
        for p in range(a, b):
            g = got[p]
            if not any(len(v) > p and v[p] == g for v in window) and not (
                g == 0 and any(lo <= p < hi for lo, hi in zero)
            ):
                return p
        return None

    for c in range(0, n, PIECE):
        p = bad(c, min(n, c + PIECE))
        if p is not None:
            what = "zero" if got[p] == 0 else f"byte {got[p]:#04x}"
            return (f"offset {p} (8 KiB block {p // 8192}): a {what} no version since the "
                    f"last fsync had there (sizes {[len(v) for v in window]})")
    return None


def describe(rec: Recorder, i: int) -> str:
    """One log entry in words."""
    e = rec.log[i]
    if e[0] == "w":
        return f"write {rec.name_of[e[1]]} @{e[2]}+{len(e[3])}"
    if e[0] == "t":
        return f"truncate {rec.name_of[e[1]]} to {e[2]}"
    if e[0] == "s":
        return f"fsync {rec.name_of.get(e[1], '.')}"
    if e[0] == "d":
        return " & ".join(
            f"{'unlink' if ino is None else 'link'} {rec.name_of.get(d, '')}/{name}"
            for d, name, ino in e[2])
    return f"{e[1][0]} of event {e[1][1]}"


def explore(rec: Recorder, check: Callable[[int, str], str | None], workdir: str, *,
            seed: int, n_random: int, each_one: int = 64,
            exhaustive: int = 10) -> tuple[int, int, list[str]]:
    """Check every crash state; returns (crash points, states, failure reports).

    Reports come with the fewest lost operations first: the simplest way to break it.
    """
    rng = random.Random(seed)
    points = crash_points(rec.log)
    states = 0
    failures: list[tuple[int, str]] = []
    for k in points:
        for dropped in subsets(droppable(rec, k), rng, n_random, each_one, exhaustive):
            dest = os.path.join(workdir, f"state{states}")
            states += 1
            materialize(rec, k, dropped, dest)
            try:
                err = check(k, dest)
            finally:
                shutil.rmtree(dest)
            if err is not None:
                last = max((i for i in range(k) if rec.log[i][0] != "m"), default=-1)
                at = (f"after {describe(rec, last)}" if last >= 0 and rec.log[last][0] == "s"
                      else f"before {describe(rec, k)}" if k < len(rec.log) else "at the end")
                lost = "; ".join(describe(rec, i) for i in sorted(dropped)) or "nothing"
                failures.append((len(dropped),
                                 f"crash at log position {k} ({at}), lost: {lost}\n    -> {err}"))
    return len(points), states, [f for _n, f in sorted(failures, key=lambda x: x[0])]
