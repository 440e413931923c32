"""`pbkfs list`: the live mounts of this host, and the diffs under a directory.

Read only from what is outside the mounts: runtime records (pbkfs.mount.runtime), the
diffs' binding and lock files, and /proc. Nothing here stats a mount point or reads
through a mount, so a hung mount cannot hang the listing.
"""

from __future__ import annotations

import fcntl
import os
import time

import msgspec

from pbkfs.diff.directory import Binding, DiffDir
from pbkfs.diff.layers import ancestors, live_children
from pbkfs.errors import PbkfsError
from pbkfs.mount.runtime import RuntimeRecord, frontend_alive, runtime_dir
from pbkfs.proc import pids, proc_stat


class MountInfo(msgspec.Struct):
    mountpoint: str
    store: str
    instance: str
    backup: str
    diff: str
    parents: list[str]
    pid: int
    uptime_s: float
    diff_bytes: int
    postgresql_running: bool


class DiffInfo(msgspec.Struct):
    diff: str
    store: str
    instance: str
    backup: str
    diff_bytes: int
    parent: str | None
    children: list[str]
    last_used: str  # ISO time of the last change of its namespace or lock
    mounted_at: str | None  # the mount point of the live mount using it


def allocated(path: str) -> int:
    """Bytes allocated under `path` (sparse files count what they hold)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


def _uptime(pid: int) -> float:
    st = proc_stat(pid)
    if st is None:
        return 0.0
    try:
        with open("/proc/uptime") as f:
            since_boot = float(f.read().split()[0])
    except OSError:
        return 0.0
    return round(max(0.0, since_boot - st.start / os.sysconf("SC_CLK_TCK")), 1)


def postgres_by_cwd() -> dict[str, list[int]]:
    """Pids of running `postgres` processes by working directory (a server's is its data
    directory): read from /proc links, never through a mount."""
    out: dict[str, list[int]] = {}
    for pid in pids():
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "postgres":
                    continue
            out.setdefault(os.readlink(f"/proc/{pid}/cwd"), []).append(pid)
        except OSError:
            continue
    return out


def postgres_pids_in(datadir: str) -> list[int]:
    """`postgres` processes of a server on `datadir`."""
    return postgres_by_cwd().get(datadir, [])


def live_mounts() -> list[MountInfo]:
    """Every mount of this host whose mount process runs, by mount point."""
    d = runtime_dir()
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(".json"))
    except OSError:
        return []
    running = postgres_by_cwd()
    out: list[MountInfo] = []
    for name in names:
        try:
            with open(os.path.join(d, name), "rb") as f:
                rec = msgspec.json.decode(f.read(), type=RuntimeRecord)
        except (OSError, msgspec.DecodeError):
            continue
        if not frontend_alive(rec):
            continue
        binding = DiffDir(rec.diff).read_binding()
        src = binding.source if binding is not None else None
        out.append(MountInfo(
            mountpoint=rec.mountpoint, store=src.store or src.path if src else "",
            instance=src.instance if src else "", backup=src.backup_id if src else "",
            diff=rec.diff, parents=_parents(DiffDir(rec.diff), binding), pid=rec.pid,
            uptime_s=_uptime(rec.pid),
            diff_bytes=allocated(rec.diff), postgresql_running=rec.mountpoint in running))
    return sorted(out, key=lambda m: m.mountpoint)


def _parents(diff: DiffDir, binding: Binding | None) -> list[str]:
    """A branch's layers, nearest parent first (pbkfs.diff.layers)."""
    if binding is None:
        return []
    try:
        return [layer.path for layer, _ in reversed(ancestors(diff, binding))]
    except PbkfsError as exc:
        return [f"? ({exc})"]


def _mounted_at(diff: DiffDir) -> str | None:
    """The mount point of the live mount holding the diff's lock, if any."""
    try:
        fd = os.open(diff.lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            info = DiffDir.lock_info(fd)
            return info.mountpoint if info is not None else "?"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def diffs_under(directory: str) -> list[DiffInfo]:
    """The diffs in `directory` and its immediate subdirectories (those with a binding)."""
    root = os.path.abspath(directory)
    candidates = [root]
    try:
        candidates += [os.path.join(root, n) for n in sorted(os.listdir(root))]
    except OSError:
        return []
    out: list[DiffInfo] = []
    for path in candidates:
        diff = DiffDir(path)
        if not os.path.isfile(diff.binding_path):
            continue
        binding = diff.read_binding()
        src = binding.source if binding is not None else None
        stamps = []
        for p in (diff.ns, diff.lock_path, diff.binding_path):
            try:
                stamps.append(os.stat(p).st_mtime)
            except OSError:
                continue
        last = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(max(stamps, default=0)))
        out.append(DiffInfo(
            diff=diff.path, store=src.store or src.path if src else "",
            instance=src.instance if src else "", backup=src.backup_id if src else "",
            diff_bytes=allocated(diff.path), parent=(binding.parent or None) if binding else None,
            children=live_children(diff), last_used=last,
            mounted_at=_mounted_at(diff)))
    return out
