"""Where a live mount records itself so `pbkfs unmount -D MNT` can find its processes.

One record per mount point (`<key>.json`, key from the absolute path) and the mount's
control socket next to it (`<key>.sock`). The frontend writes its record once mounted,
rewrites it whenever a worker was restarted (so it always names the live workers), and
removes both at exit. A killed mount cannot: `sweep_stale` removes the record, the socket
and the shared-memory segment of every mount whose frontend is gone, and runs whenever
pbkfs looks at the directory (mount, unmount, stat).

Records are replaced by rename, never edited in place. A record is judged dead only when
its frontend pid no longer names the process that wrote it (same start time), and it is
removed only if it is still the very file that was judged (a new mount of the same mount
point may replace it at any moment). The frontend writes its record before it binds its
socket and keeps it until it has closed the socket, so a socket seen while the record is
missing or dead belongs to a dead mount.
"""

from __future__ import annotations

import contextlib
import hashlib
import os

import msgspec

from pbkfs.proc import cmdline, pid_alive, proc_stat


class RuntimeRecord(msgspec.Struct):
    pid: int
    mountpoint: str
    diff: str
    shm: str
    workers: list[int]  # the live worker pids (rewritten at every restart)
    control: str = ""  # Unix socket answering `pbkfs stat` (pbkfs.mount.controlsocket)
    started: int = 0  # the frontend's start time (pbkfs.proc): tells it from a reused pid
    sid: int = 0  # the frontend's session, which its workers share
    conn: str = ""  # its FUSE connection under /sys/fs/fuse/connections (`unmount --force`)


def runtime_dir() -> str:
    if os.geteuid() == 0:
        return "/run/pbkfs"
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/pbkfs-{os.geteuid()}"
    return os.path.join(base, "pbkfs") if "XDG_RUNTIME_DIR" in os.environ else base


def record_path(mountpoint: str) -> str:
    # abspath, never realpath: resolving would stat the mount point, which can
    # hang on a mount whose process is stuck (or deadlock the process itself).
    key = hashlib.sha1(os.path.abspath(mountpoint).encode()).hexdigest()[:16]
    return os.path.join(runtime_dir(), f"{key}.json")


def control_path(mountpoint: str) -> str:
    return record_path(mountpoint)[: -len(".json")] + ".sock"


def write_record(rec: RuntimeRecord) -> None:
    """Create or replace the record atomically (readers see the old one or the new one)."""
    path = record_path(rec.mountpoint)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"  # the pid tells a leftover of a killed writer
    with open(tmp, "wb") as f:
        f.write(msgspec.json.encode(rec))
    os.rename(tmp, path)


def read_record(mountpoint: str) -> RuntimeRecord | None:
    try:
        with open(record_path(mountpoint), "rb") as f:
            return msgspec.json.decode(f.read(), type=RuntimeRecord)
    except (FileNotFoundError, msgspec.DecodeError):
        return None


def remove_record(mountpoint: str) -> None:
    try:
        os.unlink(record_path(mountpoint))
    except FileNotFoundError:
        pass


def frontend_alive(rec: RuntimeRecord) -> bool:
    """Is the process that wrote `rec` still running? (A record without a start time, from
    an older pbkfs: while its pid runs pbkfs.)"""
    if not rec.started:
        return pid_alive(rec.pid) and any(b"pbkfs" in arg for arg in cmdline(rec.pid))
    st = proc_stat(rec.pid)
    return st is not None and st.start == rec.started


def live_record(mountpoint: str) -> RuntimeRecord | None:
    """The record of the mount at `mountpoint` if its frontend still runs."""
    rec = read_record(mountpoint)
    return rec if rec is not None and frontend_alive(rec) else None


def sweep_stale(mountpoint: str | None = None) -> list[str]:
    """Remove the runtime state of dead mounts (all of them, or that of `mountpoint`):
    record, control socket, shared-memory segment, leftover temporary files.

    Returns one line per mount cleaned. State of a live mount is never touched."""
    d = runtime_dir()
    try:
        names = os.listdir(d)
    except OSError:
        return []
    only = os.path.basename(record_path(mountpoint))[: -len(".json")] if mountpoint else None
    stems: set[str] = set()
    for name in names:
        if name.endswith((".tmp", ".drop")):  # <name>.<pid>.tmp|drop of a writer or sweeper
            owner = name.rsplit(".", 2)[-2]
            if owner.isdigit() and not pid_alive(int(owner)):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(d, name))
            continue
        stem, _, ext = name.rpartition(".")
        if ext in ("json", "sock") and stem and (only is None or stem == only):
            stems.add(stem)
    notes: list[str] = []
    for stem in sorted(stems):
        notes += _sweep_one(os.path.join(d, stem))
    return notes


def _sweep_one(stem: str) -> list[str]:
    sock = stem + ".sock"
    try:
        sock_ino: int | None = os.lstat(sock).st_ino  # before the record is judged
    except OSError:
        sock_ino = None
    rec: RuntimeRecord | None = None
    try:
        fd = os.open(stem + ".json", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = -1
    except OSError:
        return []
    if fd >= 0:
        try:  # the open file keeps its inode number from being reused while we judge it
            ino = os.fstat(fd).st_ino
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read()
            try:
                rec = msgspec.json.decode(data, type=RuntimeRecord)
            except (msgspec.DecodeError, msgspec.ValidationError):
                return []  # not a record this pbkfs can judge: leave it
            if frontend_alive(rec) or not _drop_if_same(stem + ".json", ino):
                return []
        finally:
            os.close(fd)
    notes = []
    if rec is not None:
        shm = " and its shared memory" if remove_segment(rec.shm) else ""
        notes.append(f"removed the runtime record{shm} of dead mount process {rec.pid} "
                     f"(mount point {rec.mountpoint})")
    if sock_ino is not None and _drop_if_same(sock, sock_ino) and rec is None:
        notes.append(f"removed the control socket {sock} of a dead mount")
    return notes


def _drop_if_same(path: str, ino: int) -> bool:
    """Unlink `path` if it still is the file `ino`; a file that replaced it stays."""
    grave = f"{path}.{os.getpid()}.drop"
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return False
    try:
        if os.lstat(grave).st_ino == ino:
            return True
        with contextlib.suppress(FileExistsError):
            os.link(grave, path)  # put it back, unless an even newer one is there
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(grave)


def remove_segment(name: str) -> bool:
    """Unlink a mount's shared-memory segment; False if it was already gone."""
    if not name:
        return False
    import posix_ipc

    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        return False
    return True
