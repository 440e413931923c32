"""FIFOs, sockets and names that are not UTF-8, through the namespace, journal and snapshot.

The FUSE adapter hands names over as `str` decoded with surrogateescape, so a byte that
is not UTF-8 arrives as a lone surrogate (b"\\xff" -> "\\udcff"). Such a name must be
journaled, snapshotted and replayed losslessly; a FIFO ('p') or socket ('s') node is a name
and a mode, nothing more. Diffs written before either existed must still load, and a
diff that uses neither must still be written byte for byte as before.
"""

from __future__ import annotations

import errno
import stat
from pathlib import Path

import msgspec
import pytest

from pbkfs.diff import journal as J
from pbkfs.diff.journal import JournalDir
from pbkfs.fs.namespace import ROOT_INO, FsError, Namespace
from pbkfs.view.entries import ViewEntry

ENTRIES = [
    ViewEntry("base", "d", 0o700, 0),
    ViewEntry("base/1", "d", 0o700, 0),
    ViewEntry("base/1/100", "f", 0o600, 8192, True),
    ViewEntry("PG_VERSION", "f", 0o600, 3),
    ViewEntry("link", "l", 0o777, 0, target="base/1"),
]


def fs(raw: bytes) -> str:
    """A name as the FUSE adapter passes it (os.fsdecode on a UTF-8 system)."""
    return raw.decode("utf-8", "surrogateescape")


def raw(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def make(tmp_path: Path) -> tuple[Namespace, JournalDir]:
    jd = JournalDir(str(tmp_path / "ns"))
    jd.load()
    ns = Namespace(0, 0, 0, journal=jd.append)
    ns.load_entries(ENTRIES)
    return ns, jd


def remount(tmp_path: Path) -> tuple[Namespace, JournalDir]:
    """What a mount does with the diff: newest snapshot (or the backup tree), then the journal."""
    jd = JournalDir(str(tmp_path / "ns"))
    snap, records = jd.load()
    ns = Namespace(0, 0, 0, journal=jd.append)
    if snap is not None:
        ns.load_snapshot(snap)
    else:
        ns.load_entries(ENTRIES)
    assert ns.replay(records) == len(records)
    return ns, jd


def tree(ns: Namespace) -> list[tuple[bytes, int, int, int, int | None, str | None, bytes]]:
    """(path bytes, st_mode, uid, gid, fid, origin, symlink target bytes) of every name."""
    return sorted((raw(p), n.st_mode, n.uid, n.gid, n.fid, n.origin, raw(n.target))
                  for p, n in ns.walk())


def ino(ns: Namespace, path: str) -> int:
    return ns.resolve(path).ino


# -- FIFOs and sockets ---------------------------------------------------------------------


def test_fifo_and_socket_nodes_replay_and_snapshot(tmp_path: Path) -> None:
    ns, jd = make(tmp_path)
    fifo = ns.create(ROOT_INO, "fifo", "p", stat.S_IFIFO | 0o640, 5, 6)
    sock = ns.create(ino(ns, "base"), ".s.PGSQL.5432", "s", stat.S_IFSOCK | 0o777, 7, 8)
    gone = ns.create(ROOT_INO, "gone", "p", 0o600, 0, 0)
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o640
    assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o777
    assert (fifo.fid, fifo.size, fifo.nlink, sock.fid, sock.size) == (None, 0, 1, None, 0)
    ns.rename(ROOT_INO, "fifo", ino(ns, "base/1"), "fifo2")
    ns.link(sock.ino, ROOT_INO, "sock-link")
    ns.chattr(sock, mode=0o700)
    ns.unlink(ROOT_INO, "gone")
    assert ns.forget(gone.ino, 1) is None and gone.freed  # no diff object to delete
    assert ns.gc_fids() == set()
    want = tree(ns)
    assert (b"base/1/fifo2", stat.S_IFIFO | 0o640, 5, 6, None, None, b"") in want
    assert (b"sock-link", stat.S_IFSOCK | 0o700, 7, 8, None, None, b"") in want
    assert not any(p == b"gone" for p, *_ in want)
    jd.close()

    ns2, jd2 = remount(tmp_path)  # journal replay on the backup tree
    assert tree(ns2) == want
    assert ns2.resolve("sock-link") is ns2.resolve("base/.s.PGSQL.5432")
    jd2.write_snapshot(ns2.snapshot(jd2.generation + 1))
    jd2.close()

    ns3, jd3 = remount(tmp_path)  # from the snapshot
    assert tree(ns3) == want
    assert ns3.resolve("sock-link").nlink == 2
    ns3.unlink(ino(ns3, "base/1"), "fifo2")  # removable after a remount
    jd3.close()
    ns4, jd4 = remount(tmp_path)
    assert [p for p, *_ in tree(ns4) if b"fifo" in p] == []
    jd4.close()


# -- names that are not UTF-8 --------------------------------------------------------------

BAD = fs(b"caf\xe9-\xff\x80")  # Latin-1 e-acute, and bytes that start no UTF-8 sequence
BAD_DIR = fs(b"dir\xfe")
BAD_TARGET = fs(b"../target\xc3")  # a truncated UTF-8 sequence


def bad_workload(ns: Namespace) -> None:
    """Every journal record kind, with names (and a symlink target) that are not UTF-8."""
    ns.create(ROOT_INO, BAD, "f", 0o600, 0, 0)
    d = ns.create(ROOT_INO, BAD_DIR, "d", 0o700, 0, 0)
    ns.create(d.ino, fs(b"sym\xfd"), "l", 0o777, 0, 0, target=BAD_TARGET)
    ns.create(d.ino, fs(b"fifo\xfc"), "p", 0o600, 0, 0)
    ns.rename(ROOT_INO, BAD, d.ino, fs(b"moved\xff"))
    ns.link(ns.resolve(f"{BAD_DIR}/" + fs(b"moved\xff")).ino, ROOT_INO, fs(b"hard\xff"))
    ns.rename(ino(ns, "base/1"), "100", d.ino, fs(b"100\xff"))  # a backup file
    ns.bind(ns.resolve(f"{BAD_DIR}/" + fs(b"100\xff")))
    ns.chattr(ns.resolve(f"{BAD_DIR}/" + fs(b"100\xff")), mode=0o640)
    ns.create(ROOT_INO, fs(b"gone\xff"), "f", 0o600, 0, 0)
    ns.unlink(ROOT_INO, fs(b"gone\xff"))


def test_non_utf8_names_replay_and_snapshot_losslessly(tmp_path: Path) -> None:
    ns, jd = make(tmp_path)
    bad_workload(ns)
    want = tree(ns)
    assert (b"dir\xfe/100\xff", stat.S_IFREG | 0o640, 0, 0, 2, "base/1/100", b"") in want
    assert (b"dir\xfe/sym\xfd", stat.S_IFLNK | 0o777, 0, 0, None, None, b"../target\xc3") in want
    assert ns.resolve(f"{BAD_DIR}/" + fs(b"sym\xfd")).size == len(b"../target\xc3")
    jd.close()
    journal = (tmp_path / "ns" / "journal.0").read_bytes()
    assert b"dir\xfe/moved\xff" in journal and b"../target\xc3" in journal  # raw bytes
    assert "\udcff".encode("utf-8", "surrogatepass") not in journal  # no surrogates

    ns2, jd2 = remount(tmp_path)
    assert tree(ns2) == want
    assert ns2.next_fid == ns.next_fid
    jd2.write_snapshot(ns2.snapshot(jd2.generation + 1))
    ns2.rename(ino(ns2, BAD_DIR), fs(b"moved\xff"), ROOT_INO, fs(b"back\xff"))
    want2 = tree(ns2)
    jd2.close()
    assert b"dir\xfe/moved\xff" in (tmp_path / "ns" / "snapshot.1").read_bytes()

    ns3, jd3 = remount(tmp_path)  # snapshot + a journal record after it
    assert tree(ns3) == want2
    assert ns3.resolve(fs(b"back\xff")) is ns3.resolve(fs(b"hard\xff"))
    jd3.close()


def test_records_hold_byte_names_as_msgpack_bin() -> None:
    rec = J.Rename(BAD, "plain/" + BAD)
    frame = J.encode_record(rec)
    assert b"\xc4\x07caf\xe9-\xff\x80" in frame  # bin 8, 7 bytes: the name itself
    assert b"\xc4\x0dplain/caf\xe9-\xff\x80" in frame
    assert J.read_records(frame) == ([rec], len(frame))
    # bin is read as a name wherever a name is, and nowhere else
    assert J.decode_record(msgspec.msgpack.encode(["rm", b"x\xff"])) == J.Remove(fs(b"x\xff"))
    with pytest.raises(msgspec.DecodeError):
        J.decode_record(msgspec.msgpack.encode(["bind", "x", b"\x01"]))


def test_name_length_counts_bytes(tmp_path: Path) -> None:
    ns, jd = make(tmp_path)
    ns.create(ROOT_INO, fs(b"\xff" * 255), "f", 0o600, 0, 0)  # 255 bytes (not 765)
    with pytest.raises(FsError) as exc:
        ns.create(ROOT_INO, fs(b"\xff" * 256), "f", 0o600, 0, 0)
    assert exc.value.errno == errno.ENAMETOOLONG
    jd.close()
    ns2, jd2 = remount(tmp_path)
    assert fs(b"\xff" * 255) in (ns2.root.children or {})
    jd2.close()


def test_torn_record_with_a_byte_name_ends_the_replay(tmp_path: Path) -> None:
    ns, jd = make(tmp_path)
    ns.create(ROOT_INO, "ok", "f", 0o600, 0, 0)
    ns.create(ROOT_INO, BAD, "f", 0o600, 0, 0)
    jd.close()
    journal = tmp_path / "ns" / "journal.0"
    journal.write_bytes(journal.read_bytes()[:-2])
    ns2, jd2 = remount(tmp_path)
    assert set(ns2.root.children or {}) == {"base", "PG_VERSION", "link", "ok"}
    ns2.create(ROOT_INO, BAD, "f", 0o600, 0, 0)  # appended after the cut tail
    jd2.close()
    ns3, jd3 = remount(tmp_path)
    assert BAD in (ns3.root.children or {})
    jd3.close()


# -- format compatibility -------------------------------------------------------------------

# Written by pbkfs before FIFO/socket nodes and byte names existed: a snapshot of ENTRIES
# (generation 1), then a journal of: create new (fid 1), mkdir dir, symlink sym -> "café",
# rename new -> dir/moved, link dir/moved -> hard, bind base/1/100 (fid 2),
# chmod 0644 + chown 7 PG_VERSION, unlink link.
OLD_SNAPSHOT = bytes.fromhex(
    "84aa67656e65726174696f6e01a86e6578745f66696401a56e6f646573969a00a164cd01c0000000c0c0a000"
    "9a01a164cd01c0000000c0c0a0009a02a166cd0180000000aa50475f56455253494f4ec0a0039a03a16ccd01"
    "ff000000c0c0a6626173652f31069a04a164cd01c0000000c0c0a0009a05a166cd0180000000aa626173652f"
    "312f313030c0a0cd2000a56e616d65739692a00092a4626173650192aa50475f56455253494f4e0292a46c69"
    "6e6b0392a6626173652f310492aa626173652f312f31303005"
)
OLD_JOURNAL = bytes.fromhex(
    "11000000c5555a4998a26d6ba36e6577a166cd01a0050601a011000000274cf9c098a26d6ba3646972a164cd"
    "01e80506c0a016000000645bc96198a26d6ba373796da16ccd01ff0506c0a5636166c3a912000000dd2b4a2d"
    "93a26d76a36e6577a96469722f6d6f76656413000000c168dfbb93a26c6ea96469722f6d6f766564a4686172"
    "6412000000eb5a76e093a462696e64aa626173652f312f313030021600000014852db095a461747472aa5047"
    "5f56455253494f4ecd01a407c009000000c29c7fc092a2726da46c696e6b"
)
OLD_TREE = [
    (b"PG_VERSION", stat.S_IFREG | 0o644, 7, 0, None, "PG_VERSION", b""),
    (b"base", stat.S_IFDIR | 0o700, 0, 0, None, None, b""),
    (b"base/1", stat.S_IFDIR | 0o700, 0, 0, None, None, b""),
    (b"base/1/100", stat.S_IFREG | 0o600, 0, 0, 2, "base/1/100", b""),
    (b"dir", stat.S_IFDIR | 0o750, 5, 6, None, None, b""),
    (b"dir/moved", stat.S_IFREG | 0o640, 5, 6, 1, None, b""),
    (b"hard", stat.S_IFREG | 0o640, 5, 6, 1, None, b""),
    (b"sym", stat.S_IFLNK | 0o777, 5, 6, None, None, "café".encode()),
]


def old_workload(ns: Namespace) -> None:
    ns.create(ROOT_INO, "new", "f", 0o640, 5, 6)
    ns.create(ROOT_INO, "dir", "d", 0o750, 5, 6)
    ns.create(ROOT_INO, "sym", "l", 0o777, 5, 6, target="café")
    ns.rename(ROOT_INO, "new", ino(ns, "dir"), "moved")
    ns.link(ino(ns, "dir/moved"), ROOT_INO, "hard")
    ns.bind(ns.resolve("base/1/100"))
    ns.chattr(ns.resolve("PG_VERSION"), mode=0o644, uid=7)
    ns.unlink(ROOT_INO, "link")


def test_a_diff_written_before_still_loads(tmp_path: Path) -> None:
    nsdir = tmp_path / "ns"
    nsdir.mkdir()
    (nsdir / "snapshot.1").write_bytes(OLD_SNAPSHOT)
    (nsdir / "journal.1").write_bytes(OLD_JOURNAL)
    jd = JournalDir(str(nsdir))
    snap, records = jd.load()
    assert snap is not None and len(records) == 8
    ns = Namespace(0, 0, 0)
    ns.load_snapshot(snap)
    assert ns.replay(records) == 8
    assert tree(ns) == OLD_TREE
    jd.close()


def test_utf8_names_are_written_exactly_as_before(tmp_path: Path) -> None:
    """A diff without the new node kinds or byte names is byte for byte what older pbkfs
    wrote, so older pbkfs still reads it."""
    ns, jd = make(tmp_path)
    jd.write_snapshot(ns.snapshot(1))
    old_workload(ns)
    jd.close()
    assert (tmp_path / "ns" / "snapshot.1").read_bytes() == OLD_SNAPSHOT
    assert (tmp_path / "ns" / "journal.1").read_bytes() == OLD_JOURNAL
