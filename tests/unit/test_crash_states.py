"""Crash states of the diff (docs/CONTRACT.md D1-D6), explored as ALICE/CrashMonkey do.

Each workload mirrors what PostgreSQL does to its files; every file-system call
pbkfs makes on the diff is recorded (tests/support/crashmodel.py), and for each
sync point the crash states the weakest Linux model allows are built, reopened
as a mount would reopen them, and checked: what an fsync (of a file or a
directory) returned for survives; between syncs every byte is its old or its
new content, never zeros in place of backup data, never bytes that were cut
off. Run with -s to see how many states each workload explored.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from pbkfs.diff.directory import DiffDir
from pbkfs.diff.journal import JournalDir
from pbkfs.diff.objects import ObjectStore
from pbkfs.fs.settle import collect_garbage, open_namespace
from pbkfs.fs.vfs import Vfs
from pbkfs.view.source import Source, SourceSpec, open_source
from tests.support.crashmodel import History, Recorder, check_content, explore
from tests.support.fakebase import FakeBase, pattern
from tests.support.localrouter import LocalRouter

BS = 8192
SEED = 20240611
N_RANDOM = 40  # random subsets per crash point, besides none, all, each one and all but one


@pytest.fixture
def work() -> Iterator[Path]:
    """A scratch directory on tmpfs when there is one: the workloads fsync a lot."""
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    path = tempfile.mkdtemp(prefix="pbkfs-crash-", dir=shm)
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def splice(old: bytes, off: int, data: bytes) -> bytes:
    b = bytearray(old)
    if off > len(b):
        b.extend(bytes(off - len(b)))
    b[off : off + len(data)] = data
    return bytes(b)


def resize(old: bytes, size: int) -> bytes:
    return old[:size] + bytes(max(0, size - len(old)))


def page(seed: int, n: int = BS) -> bytes:
    return pattern(n, seed)


def report(name: str, points: int, states: int, failures: list[str]) -> None:
    print(f"\ncrash states [{name}]: {points} crash points, {states} states, "
          f"{states - len(failures)} held, {len(failures)} failed")
    assert not failures, f"{len(failures)} of {states} crash states break the promise:\n" + \
        "\n".join(failures[:10])


def test_the_oracle_allows_only_what_the_promise_allows() -> None:
    old = page(1, 2 * BS)
    new = splice(old, BS, page(2))
    assert check_content(old, [old, new]) is None
    assert check_content(new, [old, new]) is None
    assert check_content(old[: BS + 4096] + new[BS + 4096 :], [old, new]) is None  # torn page
    assert check_content(old[:BS] + bytes(BS), [old, new])  # zeros in place of backup data
    assert check_content(old, [new])  # an fsynced write lost
    cut = resize(old, 100)
    assert check_content(resize(cut, BS), [cut, resize(cut, BS)]) is None
    assert check_content(old[:BS], [cut, resize(cut, BS)])  # bytes that were cut off
    assert check_content(new[:4096], [b"", new]) is None  # a torn extension
    assert check_content(new[:100], [b"", new])  # ... but never cut inside a piece
    assert check_content(b"", [old])


# -- the object store alone ---------------------------------------------------------------------

class StoreDriver:
    """Drives an ObjectStore over a FakeBase and tells the History what it did."""

    def __init__(self, hist: History, store: ObjectStore, base: FakeBase) -> None:
        self.hist, self.store, self.base = hist, store, base
        self.files: dict[str, tuple[int, str | None]] = {}

    def file(self, name: str, fid: int, origin: str | None) -> None:
        self.files[name] = (fid, origin)
        self.hist.versions[name] = [self.base.files[origin] if origin else b""]

    def write(self, name: str, off: int, data: bytes) -> None:
        fid, origin = self.files[name]
        with self.hist.change(name, splice(self.hist.content(name), off, data)):
            self.store.write(fid, origin, off, data)

    def truncate(self, name: str, size: int) -> None:
        fid, origin = self.files[name]
        with self.hist.change(name, resize(self.hist.content(name), size)):
            self.store.truncate(fid, origin, size)

    def fsync(self, name: str) -> None:
        v = len(self.hist.versions[name]) - 1
        with self.hist.op("fsync", name, v, 0):
            self.store.fsync(self.files[name][0], datasync=True)


def run_store(work: Path, name: str, body: Callable[[StoreDriver], None]) -> None:
    base = FakeBase({
        "rel": page(1, 6 * BS),        # a relation of 6 pages
        "seg0": page(2, 4 * BS),       # a relation in two segments
        "seg1": page(3, 3 * BS),
        "odd": page(4, 2 * BS + 100),  # not a multiple of the page size
    })
    root = work / "diff"
    objects = root / "objects"
    objects.mkdir(parents=True)
    rec = Recorder(str(root))
    hist = History(rec)
    store = ObjectStore(str(objects), base, BS)
    drv = StoreDriver(hist, store, base)
    with rec.recording():
        body(drv)
    store.close_all()
    windows: dict[int, dict[str, list[bytes]]] = {}

    def read_all(dest: str) -> dict[str, bytes]:
        s = ObjectStore(os.path.join(dest, "objects"), base, BS)
        try:
            return {f: s.read(fid, origin, 0, 1 << 40) for f, (fid, origin) in drv.files.items()}
        finally:
            s.close_all()

    def check(k: int, dest: str) -> str | None:
        if k not in windows:
            windows[k] = hist.window(k)[0]
        got = read_all(dest)
        if read_all(dest) != got:
            return "a second open reads differently from the first"
        for f, data in got.items():
            err = check_content(data, windows[k][f])
            if err:
                return f"{f}: {err}"
        return None

    report(name, *explore(rec, check, str(work / "states"), seed=SEED, n_random=N_RANDOM))


def test_first_write_to_a_backup_file(work: Path) -> None:
    """The smallest case: one page of a backup file written, then fsynced."""

    def body(d: StoreDriver) -> None:
        d.file("rel", 1, "rel")
        d.write("rel", 2 * BS, page(9))
        d.fsync("rel")

    run_store(work, "store: first write", body)


def test_extend_and_overwrite_pages(work: Path) -> None:
    """Relation extension by 8 KiB pages; full and partial overwrites of backup pages."""

    def body(d: StoreDriver) -> None:
        d.file("rel", 1, "rel")
        d.file("new", 2, None)
        d.write("rel", 1 * BS, page(10))               # full page over backup data
        d.write("rel", 3 * BS + 100, page(11, 300))    # partial page: read-modify-write
        d.write("new", 0, page(12))
        d.fsync("rel")
        d.write("rel", 6 * BS, page(13))               # extend past the backup
        d.write("rel", 7 * BS, page(14))
        d.write("new", BS, page(15))
        d.write("rel", 4 * BS + 8000, page(16, 400))   # partial, across two pages
        d.fsync("new")
        d.fsync("rel")
        d.write("rel", 1 * BS, page(17))               # again, unsynced at the end
        d.write("rel", 0, page(18, 512))

    run_store(work, "store: extend and overwrite", body)


def test_truncate_then_extend(work: Path) -> None:
    """Truncation inside a page, across pages and across segments, then extension."""

    def body(d: StoreDriver) -> None:
        d.file("rel", 1, "rel")
        d.file("seg0", 2, "seg0")
        d.file("seg1", 3, "seg1")
        d.file("odd", 4, "odd")
        d.write("rel", 1 * BS, page(20))
        d.truncate("rel", 2 * BS + 1000)               # inside a backup page
        d.write("rel", 4 * BS, page(21))               # extend: the gap reads zeros
        d.fsync("rel")
        d.truncate("rel", BS)                          # across pages, at a boundary
        d.write("rel", 2 * BS + 10, page(22, 100))
        d.fsync("rel")
        d.truncate("seg1", 0)                          # drop a whole segment ...
        d.truncate("seg0", 2 * BS)                     # ... and cut the one before it
        d.write("seg0", 2 * BS, page(23))              # then extend again
        d.fsync("seg1")
        d.fsync("seg0")
        d.truncate("odd", 50)                          # unsynced cut, then extend
        d.write("odd", BS, page(24, 200))

    run_store(work, "store: truncate then extend", body)


def test_checkpoint_fsync_storm(work: Path) -> None:
    """A checkpoint: many files written, then each fsynced in turn (twice)."""

    def body(d: StoreDriver) -> None:
        for i, name in enumerate(["rel", "seg0", "seg1", "odd"]):
            d.file(name, i + 1, name)
        d.file("new1", 5, None)
        d.file("new2", 6, None)
        names = list(d.files)
        for rnd in range(2):
            for i, name in enumerate(names):
                d.write(name, ((i + rnd) % 3) * BS, page(30 + 10 * rnd + i))
            for name in names:
                d.fsync(name)

    run_store(work, "store: checkpoint storm", body)


# -- a whole mount without FUSE: Vfs over a plain base with in-process workers -------------------

BASE = {
    "PG_VERSION": b"15\n",
    "postgresql.auto.conf": b"# Do not edit this file manually!\nport = 5432\n",
    "global/pg_control": page(40),
    "base/5/16384": page(41, 5 * BS),
    "base/5/16384.1": page(42, 2 * BS),
    "pg_wal/.keep": b"",
}


class VfsDriver:
    """Drives a Vfs by path as the kernel would and tells the History what it did."""

    def __init__(self, hist: History, vfs: Vfs) -> None:
        self.hist, self.vfs = hist, vfs
        self.fh: dict[str, int] = {}
        self.dep: dict[str, int] = {}  # file or directory -> last name state it needs
        self.made = 0

    def _ino(self, path: str) -> int:
        return self.vfs.ns.resolve(path).ino

    def _split(self, path: str) -> tuple[int, str, str]:
        parent, _, name = path.rpartition("/")
        return self._ino(parent), name, parent

    def _names(self, new: dict[str, str], *paths: str) -> Any:
        ctx = self.hist.rename_names(new)
        n = len(self.hist.names) - 1
        for p in paths:
            self.dep[p.rpartition("/")[0]] = n
        return ctx

    def f(self, path: str) -> str:
        return self.hist.names[-1][path]

    def create(self, path: str) -> None:
        self.made += 1
        f = f"new{self.made}:{path}"
        self.hist.versions[f] = [b""]
        ino, name, _ = self._split(path)
        with self._names({**self.hist.names[-1], path: f}, path):
            self.fh[path], _node = self.vfs.create(ino, name, 0o600, os.O_RDWR, 0, 0)
        self.dep[f] = len(self.hist.names) - 1

    async def open(self, path: str) -> None:
        self.fh[path] = await self.vfs.open(self._ino(path), os.O_RDWR)

    async def close(self, path: str) -> None:
        fh = self.fh.pop(path)
        node = self.vfs.handles[fh].node
        await self.vfs.release(fh)
        self.vfs.forget([(node.ino, node.lookups)])  # the kernel drops its references

    async def write(self, path: str, off: int, data: bytes) -> None:
        f = self.f(path)
        with self.hist.change(f, splice(self.hist.content(f), off, data)):
            await self.vfs.write(self.fh[path], off, data)

    async def truncate(self, path: str, size: int) -> None:
        f = self.f(path)
        with self.hist.change(f, resize(self.hist.content(f), size)):
            await self.vfs.setattr(self._ino(path), size=size)

    async def fsync(self, path: str) -> None:
        f = self.f(path)
        with self.hist.op("fsync", f, len(self.hist.versions[f]) - 1, self.dep.get(f, 0)):
            await self.vfs.fsync(self.fh[path], datasync=False)

    async def fsyncdir(self, path: str) -> None:
        with self.hist.op("dirsync", self.dep.get(path, 0)):
            fh = self.vfs.opendir(self._ino(path) if path else 1)
            await self.vfs.fsyncdir(fh, False)
            self.vfs.releasedir(fh)

    def unlink(self, path: str) -> None:
        new = dict(self.hist.names[-1])
        del new[path]
        ino, name, _ = self._split(path)
        with self._names(new, path):
            self.vfs.unlink(ino, name)

    def rename(self, src: str, dst: str) -> None:
        new = dict(self.hist.names[-1])
        f = new[dst] = new.pop(src)
        (p1, n1, _), (p2, n2, _) = self._split(src), self._split(dst)
        with self._names(new, src, dst):
            self.vfs.rename(p1, n1, p2, n2, 0)
        self.dep[f] = len(self.hist.names) - 1


def mount_view(diff_path: str, source: Source) -> dict[str, bytes] | str:
    """What a mount of the diff serves: every file's content (or why it is inconsistent).

    The steps of pbkfs.mount.frontend.prepare_locked: load the newest generation,
    open the namespace (replay, settle sizes), collect garbage, write a new snapshot
    after a replay.
    """
    diff = DiffDir(diff_path)
    jd = JournalDir(diff.ns)
    snap, records = jd.load()
    ns, replayed = open_namespace(diff, source, 0, snap, records, journal=jd.append)
    if replayed != len(records):
        jd.close()
        return f"only {replayed} of {len(records)} journal records apply"
    collect_garbage(ns, diff)
    if replayed:
        jd.write_snapshot(ns.snapshot(jd.generation + 1))
    jd.close()
    store = ObjectStore(diff.objects, source, BS)
    out: dict[str, bytes] = {}
    try:
        stack = [("", ns.root)]
        while stack:
            path, d = stack.pop()
            assert d.children is not None
            for name, node in d.children.items():
                p = f"{path}/{name}" if path else name
                if node.kind == "d":
                    stack.append((p, node))
                    continue
                if node.fid is None:
                    assert node.origin is not None
                    data = store.read_base(node.origin, node.size, 0, node.size)
                else:
                    data = store.read(node.fid, node.origin, 0, 1 << 40)
                if len(data) != node.size:
                    return f"{p}: size {node.size} but {len(data)} bytes of content"
                out[p] = data
    finally:
        store.close_all()
    return out


def run_mount(work: Path, name: str, body: Callable[[VfsDriver], Awaitable[None]]) -> None:
    base = work / "base"
    for rel, data in BASE.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(data)
    (base / "pg_wal/.keep").unlink()  # an empty directory
    source = open_source(SourceSpec("plain", path=str(base)))
    diff = DiffDir(str(work / "diff"))
    diff.create()
    rec = Recorder(diff.path)
    hist = History(rec, {p: f"base:{p}" for p in BASE if p != "pg_wal/.keep"})
    for p, f in hist.names[0].items():
        hist.versions[f] = [BASE[p]]
    with rec.recording():
        # The first mount of a fresh diff (pbkfs.mount.frontend.prepare_locked) ...
        jd = JournalDir(diff.ns)
        snap, records = jd.load()
        ns, _n = open_namespace(diff, source, 0, snap, records, journal=jd.append)
        collect_garbage(ns, diff)
        jd.sync()
        jd.write_snapshot(ns.snapshot(jd.generation + 1))
        # ... then what PostgreSQL does through it.
        router = LocalRouter(2, diff.objects, source, BS)
        vfs = Vfs(ns, router, diff.objects, jd, None, diff.path)  # type: ignore[arg-type]
        trio.run(body, VfsDriver(hist, vfs))
        router.close()
        vfs.close_fds()
        jd.close()
    windows: dict[int, tuple[dict[str, list[bytes]], list[dict[str, str]]]] = {}

    def check(k: int, dest: str) -> str | None:
        if k not in windows:
            windows[k] = hist.window(k)
        files, names = windows[k]
        got = mount_view(dest, source)
        if isinstance(got, str):
            return got
        again = mount_view(dest, source)
        if again != got:
            return "a second mount serves something else than the first"
        allowed = [n for n in names if set(n) == set(got)]
        if not allowed:
            want = names[0]
            return (f"names: missing {sorted(set(want) - set(got))}, "
                    f"unexpected {sorted(set(got) - set(want))} (allowed: {len(names)} states)")
        errors = []
        for n in allowed:
            errs = [f"{p}: {e}" for p, f in n.items() if (e := check_content(got[p], files[f]))]
            if not errs:
                return None
            errors.append("; ".join(errs))
        return errors[0]

    report(name, *explore(rec, check, str(work / "states"), seed=SEED, n_random=N_RANDOM))


def test_mount_relations(work: Path) -> None:
    """Backup relations overwritten, extended, truncated across segments; a new relation."""

    async def body(d: VfsDriver) -> None:
        rel, seg = "base/5/16384", "base/5/16384.1"
        await d.open(rel)
        await d.write(rel, 1 * BS, page(50))
        await d.write(rel, 3 * BS + 100, page(51, 300))
        await d.fsync(rel)
        await d.write(rel, 5 * BS, page(52))           # extend by two pages
        await d.write(rel, 6 * BS, page(53))
        await d.fsync(rel)
        d.create("base/5/16385")                       # create + write + fsync, no dir fsync
        await d.write("base/5/16385", 0, page(54))
        await d.write("base/5/16385", BS, page(55))
        await d.fsync("base/5/16385")
        await d.open(seg)
        await d.truncate(seg, 0)                       # truncate across segments ...
        await d.truncate(rel, 2 * BS + 1000)           # ... and inside a page
        await d.write(rel, 3 * BS, page(56))           # then extend
        await d.fsync(seg)
        await d.fsync(rel)
        await d.open("global/pg_control")              # checkpoint: write all, fsync each
        await d.write("global/pg_control", 0, page(57, 512))
        for i, p in enumerate([rel, "base/5/16385", seg]):
            await d.write(p, 0, page(58 + i))
        for p in ["global/pg_control", rel, "base/5/16385", seg]:
            await d.fsync(p)
        await d.write(rel, BS, page(62))               # unsynced at the end

    run_mount(work, "mount: relations", body)


def test_mount_names(work: Path) -> None:
    """Durable rename, unlink of an open file, and names removed before a directory fsync."""

    async def body(d: VfsDriver) -> None:
        conf, tmp = "postgresql.auto.conf", "postgresql.auto.conf.tmp"
        await d.open("global/pg_control")
        await d.write("global/pg_control", 0, page(69))
        await d.fsync("global/pg_control")
        await d.open(conf)                             # the old file has an object too
        await d.write(conf, 0, b"# edited\n")
        await d.fsync(conf)
        await d.close(conf)
        d.create(tmp)                                  # durable rename over it
        await d.write(tmp, 0, b"port = 5433\n" * 5)
        await d.fsync(tmp)
        await d.close(tmp)
        d.rename(tmp, conf)
        await d.fsyncdir("")
        d.create("base/5/16390")                       # unlink while open
        await d.write("base/5/16390", 0, page(70))
        await d.fsync("base/5/16390")
        d.unlink("base/5/16390")
        await d.fsyncdir("base/5")
        await d.close("base/5/16390")
        wal = "pg_wal/000000010000000000000001"        # fsynced, unlinked, no dir fsync yet
        d.create(wal)
        await d.write(wal, 0, page(71, 2 * BS))
        await d.fsync(wal)
        await d.close(wal)
        d.unlink(wal)
        seg = "base/5/16384.1"                         # the same with a backup file
        await d.open(seg)
        await d.write(seg, 0, page(72))
        await d.fsync(seg)
        await d.close(seg)
        d.unlink(seg)
        await d.write("global/pg_control", 0, page(73))  # an fsync that syncs no name
        await d.fsync("global/pg_control")
        await d.fsyncdir("pg_wal")
        await d.fsyncdir("base/5")

    run_mount(work, "mount: names", body)
