"""The first mount of a diff shapes the tree once, in the diff (the backup is unchanged).

* postgresql.auto.conf gets the mount's PostgreSQL settings (conf/postgresql.pbkfs.conf,
  plus what an in-place tablespace needs), and recovery settings when recovery is asked;
* the files restore creates for recovery (recovery.signal);
* pg_wal's WAL is copied to a plain directory of the diff, which the mount binds over
  pg_wal (or, for diffs made so before, pg_wal becomes a symlink to it); a segment's zero
  tail is allocated, not fetched, when the backup's listed CRC proves it zeros.

The caller persists the result as a snapshot right after.
"""

from __future__ import annotations

import os

from pbkfs.diff.directory import DiffDir
from pbkfs.diff.objects import ObjectStore
from pbkfs.fs.namespace import Namespace, Node
from pbkfs.fs.walcopy import copy_to
from pbkfs.fsutil import fsync_dir
from pbkfs.recovery.mountplan import MountRecovery, save_options
from pbkfs.view.source import Source


def setup_local_wal(ns: Namespace, diff: DiffDir, source: Source, uid: int, gid: int,
                    target: str = "", bind: bool = False) -> None:
    """First mount with pg_wal in the diff: the backup's pg_wal copied to <diff>/wal.

    With `bind`, pg_wal stays an (empty) directory of the tree that the mount covers
    with a bind mount of <diff>/wal (pbkfs.mount.walbind); else it becomes a symlink to
    it. With `target` (--no-wal), the copy goes there instead: a scratch directory.
    """
    wal = target or diff.wal
    try:
        node = ns.resolve("pg_wal")
    except Exception:
        node = None
    os.makedirs(wal, mode=0o700, exist_ok=True)
    copied_dirs = [wal]
    if node is not None and node.kind == "d":
        stack: list[tuple[str, Node]] = [("pg_wal", node)]
        while stack:
            path, d = stack.pop()
            assert d.children is not None
            for name, child in d.children.items():
                cpath = f"{path}/{name}"
                dst = os.path.join(wal, cpath[len("pg_wal/") :])
                if child.kind == "d":
                    os.makedirs(dst, mode=child.mode, exist_ok=True)
                    copied_dirs.append(dst)
                    stack.append((cpath, child))
                elif child.kind == "f" and child.origin is not None:
                    # the zero tail of a segment is not fetched (pbkfs.fs.walcopy)
                    copy_to(source, child.origin, child.size, dst, child.mode & 0o7777)
                os.lchown(dst, uid, gid)
        ns.replaying = True  # the initial shape of the tree, recorded by the snapshot below
        try:
            _remove_tree(ns, node)
            ns.rmdir(ns.root.ino, "pg_wal")
        finally:
            ns.replaying = False
    os.chown(diff.path, uid, gid)
    os.chown(wal, uid, gid)
    os.chmod(wal, 0o700)
    # The copy is the diff's WAL from now on: its names must be as durable as its bytes
    # before the snapshot that drops pg_wal from the tree is written.
    for copied in reversed(copied_dirs):
        fsync_dir(copied)
    fsync_dir(os.path.dirname(os.path.abspath(wal)))
    ns.replaying = True
    try:
        if bind:
            mode = node.mode if node is not None and node.kind == "d" else 0o700
            os.chmod(wal, mode)
            made = ns.create(ns.root.ino, "pg_wal", "d", mode, uid, gid)
        else:
            made = ns.create(ns.root.ino, "pg_wal", "l", 0o777, uid, gid, target=wal)
        made.lookups = 0
    finally:
        ns.replaying = False


# Needed by every mount, whatever conf/postgresql.pbkfs.conf says: pg_tblspc/<oid> is a
# directory inside the mount (an in-place tablespace), which PostgreSQL 15 refuses at the
# end of recovery unless this is on.
REQUIRED_SETTINGS = [("allow_in_place_tablespaces", "on")]
AUTO_CONF = "postgresql.auto.conf"


def settings_text(settings: list[tuple[str, str]]) -> bytes:
    lines = ["", "# Added by pbkfs mount (the backup itself is unchanged):"]
    for name, value in settings:
        quoted = value.replace("'", "''")
        lines.append(f"{name} = '{quoted}'")
    return ("\n".join(lines) + "\n").encode()


def apply_postgresql_conf(
    ns: Namespace, diff: DiffDir, source: Source, uid: int, gid: int, extra: bool,
    recovery_text: bytes = b"",
) -> None:
    """First mount: append the mount's PostgreSQL settings (and recovery settings, as restore
    writes them) to postgresql.auto.conf (in the diff)."""
    from pbkfs.config import postgresql_settings

    settings = list(postgresql_settings()) if extra else []
    names = {n for n, _ in settings}
    settings += [s for s in REQUIRED_SETTINGS if s[0] not in names]
    node = ns.root.children.get(AUTO_CONF) if ns.root.children else None
    if node is None:
        node = ns.create(ns.root.ino, AUTO_CONF, "f", 0o600, uid, gid)
        node.lookups = 0
    store = ObjectStore(diff.objects, source, source.block_size)
    try:
        fid = ns.bind(node)
        text = settings_text(settings) + recovery_text
        if node.size and node.origin is not None:
            last = source.read(node.origin, node.size - 1, 1)
            if last != b"\n":
                text = b"\n" + text
        store.write(fid, node.origin, node.size, text)
        node.size += len(text)
        store.sync_all()
    finally:
        store.close_all()


def create_recovery_files(
    ns: Namespace, diff: DiffDir, source: Source, uid: int, gid: int, rec: MountRecovery
) -> None:
    """First mount: the files restore creates for recovery (recovery.signal), in the diff,
    and the recovery target recorded so a remount never recovers again."""
    store = ObjectStore(diff.objects, source, source.block_size)
    try:
        for name, content in rec.create.items():
            if ns.root.children and name in ns.root.children:
                continue
            node = ns.create(ns.root.ino, name, "f", 0o600, uid, gid)
            node.lookups = 0
            if content:
                store.write(ns.bind(node), node.origin, 0, content)
                node.size = len(content)
        store.sync_all()
    finally:
        store.close_all()
    save_options(diff.path, rec.options)


def _remove_tree(ns: Namespace, d: Node) -> None:
    assert d.children is not None
    for name, child in list(d.children.items()):
        if child.kind == "d":
            _remove_tree(ns, child)
            ns.rmdir(d.ino, name)
        else:
            ns.unlink(d.ino, name)


