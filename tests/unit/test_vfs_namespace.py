"""The namespace without a mount: inodes, names, whiteouts by omission, journal replay."""

from __future__ import annotations

import errno
import gc
import os
import tracemalloc
from pathlib import Path

import pytest

from pbkfs.diff import journal as J
from pbkfs.diff.journal import JournalDir
from pbkfs.fs.namespace import RENAME_NOREPLACE, FsError, Namespace
from pbkfs.view.entries import ViewEntry

ENTRIES = [
    ViewEntry("base", "d", 0o700, 0),
    ViewEntry("base/1", "d", 0o700, 0),
    ViewEntry("base/1/100", "f", 0o600, 16384, True),
    ViewEntry("base/1/101", "f", 0o600, 8192, True),
    ViewEntry("pg_wal", "d", 0o700, 0),
    ViewEntry("pg_wal/000000010000000000000001", "f", 0o600, 1 << 20),
    ViewEntry("pg_tblspc", "d", 0o700, 0),
    ViewEntry("pg_tblspc/16384", "d", 0o700, 0),
    ViewEntry("pg_tblspc/16384/PG_15", "d", 0o700, 0),
    ViewEntry("PG_VERSION", "f", 0o600, 3),
    ViewEntry("link", "l", 0o777, 0, target="base/1"),
]


def make(tmp_path: Path | None = None) -> tuple[Namespace, JournalDir | None]:
    jd = JournalDir(str(tmp_path / "ns")) if tmp_path else None
    if jd:
        jd.load()
    ns = Namespace(101, 104, 0, journal=jd.append if jd else None)
    ns.load_entries(ENTRIES)
    return ns, jd


def ino(ns: Namespace, path: str) -> int:
    return ns.resolve(path).ino


def listing(ns: Namespace) -> list[tuple[str, str, int, int | None, str | None]]:
    out = []
    for path, key in ns.snapshot(0).names:
        node = {n.key: n for n in ns.snapshot(0).nodes}[key]
        out.append((path, node.kind, node.mode, node.fid, node.origin))
    return sorted(out)


def test_one_inode_per_object() -> None:
    """Lesson 11: two lookups of one path give one inode number."""
    ns, _ = make()
    a = ns.lookup(ino(ns, "base/1"), "100")
    b = ns.lookup(ino(ns, "base/1"), "100")
    assert a is b and a.lookups == 2


def test_unlink_backup_file_copies_nothing() -> None:
    """Unlinking a backup-only file records no object (no data copied)."""
    ns, _ = make()
    node, fid = ns.unlink(ino(ns, "base/1"), "100")
    assert fid is None and node.fid is None
    with pytest.raises(FsError) as e:
        ns.resolve("base/1/100")
    assert e.value.errno == errno.ENOENT


def test_rename_keeps_origin_and_replaces_target() -> None:
    """WAL recycling: rename of a backup file keeps its content origin; the target goes."""
    ns, _ = make()
    wal = ino(ns, "pg_wal")
    ns.create(wal, "000000010000000000000002", "f", 0o600, 101, 104)
    moved, _freed = ns.rename(wal, "000000010000000000000001", wal, "000000010000000000000002")
    assert moved.origin == "pg_wal/000000010000000000000001" and moved.fid is None
    assert ns.resolve("pg_wal/000000010000000000000002") is moved
    assert list(ns.resolve("pg_wal").children or {}) == ["000000010000000000000002"]


def test_rename_noreplace_and_errors() -> None:
    ns, _ = make()
    b1 = ino(ns, "base/1")
    with pytest.raises(FsError) as e:
        ns.rename(b1, "100", b1, "101", RENAME_NOREPLACE)
    assert e.value.errno == errno.EEXIST
    with pytest.raises(FsError) as e:
        ns.rename(ino(ns, ""), "base", b1, "x")
    assert e.value.errno == errno.EINVAL
    with pytest.raises(FsError) as e:
        ns.rename(b1, "100", ino(ns, ""), "base")
    assert e.value.errno == errno.EISDIR
    with pytest.raises(FsError) as e:
        ns.rename(ino(ns, ""), "pg_wal", ino(ns, ""), "base")
    assert e.value.errno == errno.ENOTEMPTY


def test_directory_rename_moves_the_whole_subtree() -> None:
    """Lesson 33: backup-only children move with their directory."""
    ns, _ = make()
    ns.rename(ino(ns, ""), "base", ino(ns, ""), "moved")
    assert ns.resolve("moved/1/100").origin == "base/1/100"
    with pytest.raises(FsError):
        ns.resolve("base")


def test_rmdir_checks_merged_emptiness() -> None:
    ns, _ = make()
    with pytest.raises(FsError) as e:
        ns.rmdir(ino(ns, "pg_tblspc"), "16384")
    assert e.value.errno == errno.ENOTEMPTY


def test_link_shares_one_object() -> None:
    ns, _ = make()
    node = ns.resolve("base/1/100")
    ns.link(node.ino, ino(ns, "base"), "hard")
    assert ns.resolve("base/hard") is node and node.nlink == 2
    ns.unlink(ino(ns, "base/1"), "100")
    assert ns.resolve("base/hard") is node and node.nlink == 1
    with pytest.raises(FsError) as e:
        ns.link(ino(ns, "base"), ino(ns, ""), "x")
    assert e.value.errno == errno.EPERM


def test_unlinked_open_file_lives_until_released() -> None:
    """Lessons 12, 32: an inode lives while open or known; then its object is freed."""
    ns, _ = make()
    d = ino(ns, "")
    node = ns.create(d, "tmp", "f", 0o600, 0, 0)  # lookup count 1
    node.opens = 1
    _n, fid = ns.unlink(d, "tmp")
    assert fid is None and node.ino in ns.inodes
    node.opens = 0
    assert ns.maybe_free(node) is None  # the kernel still knows it
    assert ns.forget(node.ino, 1) == node.fid
    assert node.ino not in ns.inodes
    # a new file at the same path gets a new inode number
    again = ns.create(d, "tmp", "f", 0o600, 0, 0)
    assert again.ino != node.ino


def test_never_freed_while_in_flight() -> None:
    """Lesson 12: forget to zero does not free an inode with operations in flight."""
    ns, _ = make()
    d = ino(ns, "")
    node = ns.create(d, "f", "f", 0o600, 0, 0)
    node.inflight = 1
    ns.unlink(d, "f")
    assert ns.forget(node.ino, 1) is None and node.ino in ns.inodes
    node.inflight = 0
    assert ns.maybe_free(node) == node.fid


def test_names_are_checked() -> None:
    ns, _ = make()
    for bad, err in (("a/b", errno.EINVAL), ("x" * 256, errno.ENAMETOOLONG)):
        with pytest.raises(FsError) as e:
            ns.create(ino(ns, ""), bad, "f", 0o600, 0, 0)
        assert e.value.errno == err


def apply_workload(ns: Namespace) -> None:
    root, b1 = ino(ns, ""), ino(ns, "base/1")
    ns.create(root, "newdir", "d", 0o750, 5, 6)
    f = ns.create(ino(ns, "newdir"), "file", "f", 0o640, 5, 6)
    ns.link(f.ino, root, "hardlink")
    ns.rename(b1, "100", ino(ns, "newdir"), "moved")
    ns.bind(ns.resolve("base/1/101"))
    ns.unlink(ino(ns, "pg_wal"), "000000010000000000000001")
    ns.create(root, "sym", "l", 0o777, 5, 6, target="/elsewhere")
    ns.chattr(ns.resolve("PG_VERSION"), mode=0o644, uid=7)
    ns.rename(root, "newdir", ino(ns, "base"), "nd")
    ns.rmdir(ino(ns, "pg_tblspc/16384"), "PG_15")


def test_journal_replay_rebuilds_the_same_tree(tmp_path: Path) -> None:
    """Every answered change is in the journal; replay on the backup tree gives the same tree."""
    ns, jd = make(tmp_path)
    apply_workload(ns)
    want = listing(ns)
    assert jd is not None
    jd.close()
    jd2 = JournalDir(str(tmp_path / "ns"))
    snap, records = jd2.load()
    assert snap is None and len(records) == 10
    ns2 = Namespace(101, 104, 0)
    ns2.load_entries(ENTRIES)
    ns2.replay(records)
    assert listing(ns2) == want
    assert ns2.next_fid >= ns.next_fid - 0


def test_snapshot_round_trip_and_torn_journal_tail(tmp_path: Path) -> None:
    ns, jd = make(tmp_path)
    assert jd is not None
    apply_workload(ns)
    jd.write_snapshot(ns.snapshot(jd.generation + 1))
    ns.create(ino(ns, ""), "after", "f", 0o600, 0, 0)
    ns.create(ino(ns, ""), "torn", "f", 0o600, 0, 0)
    jd.close()
    journal = tmp_path / "ns" / "journal.1"
    data = journal.read_bytes()
    journal.write_bytes(data[:-3])  # the last record was torn by a crash
    jd2 = JournalDir(str(tmp_path / "ns"))
    snap, records = jd2.load()
    assert snap is not None and [type(r) for r in records] == [J.Mknode]
    ns2 = Namespace(101, 104, 0)
    ns2.load_snapshot(snap)
    ns2.replay(records)
    names = {p for p, *_ in listing(ns2)}
    assert "after" in names and "torn" not in names
    assert "base/nd/file" in names and "hardlink" in names
    assert ns2.resolve("hardlink") is ns2.resolve("base/nd/file")
    # appending after the cut tail produces a readable journal
    jd2.append(J.Remove("after"))
    jd2.close()
    _snap, records = JournalDir(str(tmp_path / "ns")).load()
    assert len(records) == 2


def test_memory_flat_across_create_unlink_cycles() -> None:
    """100k create/unlink cycles leave no per-inode state behind."""
    ns, _ = make()
    root = ino(ns, "")
    before = len(ns.inodes)

    def cycle(n: int) -> None:
        for i in range(n):
            node = ns.create(root, f"f{i % 7}", "f", 0o600, 0, 0)
            ns.unlink(root, f"f{i % 7}")
            ns.forget(node.ino, 1)

    cycle(1000)
    gc.collect()
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    cycle(100_000)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - start
    tracemalloc.stop()
    assert len(ns.inodes) == before
    assert grown < 64 * 1024, grown


def test_replay_stops_at_a_record_that_does_not_apply() -> None:
    ns, _ = make()
    n = ns.replay([
        J.Mknode("a", "f", 0o600, 0, 0, 5),
        J.Remove("does/not/exist"),
        J.Mknode("b", "f", 0o600, 0, 0, 6),
    ], log=lambda _m: None)
    assert n == 1
    assert ns.resolve("a").fid == 5
    with pytest.raises(FsError):
        ns.resolve("b")


def test_a_change_the_journal_refuses_is_not_made() -> None:
    """Disk full while journaling: the operation fails and the tree is unchanged."""
    fail = {"on": False}
    records: list[J.Rec] = []

    def journal(rec: J.Rec) -> int:
        if fail["on"]:
            raise OSError(28, "No space left on device")
        records.append(rec)
        return len(records)

    ns = Namespace(0, 0, 0, journal=journal)
    ns.load_entries(ENTRIES)
    before = listing(ns)
    inodes = len(ns.inodes)
    fail["on"] = True
    root, b1 = ino(ns, ""), ino(ns, "base/1")
    for op in (
        lambda: ns.create(root, "new", "f", 0o600, 0, 0),
        lambda: ns.unlink(b1, "100"),
        lambda: ns.rename(b1, "100", root, "moved"),
        lambda: ns.link(ns.resolve("base/1/101").ino, root, "hard"),
        lambda: ns.rmdir(ino(ns, "pg_tblspc/16384"), "PG_15"),
        lambda: ns.bind(ns.resolve("base/1/100")),
        lambda: ns.chattr(ns.resolve("PG_VERSION"), mode=0o644),
    ):
        with pytest.raises(OSError):
            op()
    assert listing(ns) == before and len(ns.inodes) == inodes
    assert ns.resolve("PG_VERSION").mode == 0o600


def test_failed_append_is_cut_off(tmp_path: Path) -> None:
    jd = JournalDir(str(tmp_path / "ns"))
    jd.load()
    jd.append(J.Remove("a"))
    real_write = os.write

    def short(fd: int, data: bytes) -> int:
        return real_write(fd, data[:5])

    os.write = short  # type: ignore[assignment]
    try:
        with pytest.raises(OSError):
            jd.append(J.Remove("b"))
    finally:
        os.write = real_write
    jd.append(J.Remove("c"))
    jd.close()
    _snap, records = JournalDir(str(tmp_path / "ns")).load()
    assert [r.path for r in records if isinstance(r, J.Remove)] == ["a", "c"]
