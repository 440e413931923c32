"""The diff directory: binding, lock, and where everything pbkfs keeps lives.

```
<diff>/            0700
  binding.json     what this diff belongs to (source, chain, creation time)
  lock             flock'd by the live mount; JSON: pid, host, mount point
  ns/              namespace journal and snapshots (journal.py)
  objects/         <fid> data files and <fid>.map block maps (diffstore.py)
  wal/             pg_wal (bind-mounted over the mount's pg_wal, or its symlink's target)
  children/        one entry per branch stacked on this diff (pbkfs.diff.layers)
  pbkfs.log        log of background mounts
```

Nothing here is visible inside the mounted data directory.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time

import msgspec

from pbkfs.diff.durability import not_resumable_error
from pbkfs.errors import UsageError
from pbkfs.fsutil import fsync_dir, write_all
from pbkfs.view.source import SourceSpec

FORMAT = 1


class Binding(msgspec.Struct):
    """The backup a diff belongs to; written once, checked at every mount."""

    source: SourceSpec
    chain: list[str]
    created_at: str
    base_time_ns: int
    local_wal: bool = False
    format: int = FORMAT
    resumable: bool = True  # False once mounted with --no-wal (pbkfs.diff.durability)
    wal_bind: bool = False  # local_wal: wal/ bind-mounted over pg_wal (else pg_wal a symlink)
    parent: str = ""  # a branch: the diff under this one (pbkfs.diff.layers)


class LockInfo(msgspec.Struct):
    pid: int
    host: str
    mountpoint: str
    started: str


def same_source(a: SourceSpec, b: SourceSpec) -> bool:
    if a.kind != b.kind:
        return False
    if a.kind == "plain":
        return os.path.realpath(a.path) == os.path.realpath(b.path)
    return (
        os.path.realpath(a.store) == os.path.realpath(b.store)
        and a.instance == b.instance
        and a.backup_id.upper() == b.backup_id.upper()
    )


def describe(spec: SourceSpec) -> str:
    if spec.kind == "plain":
        return f"directory {spec.path}"
    return f"backup {spec.backup_id} of instance {spec.instance} in {spec.store}"


def write_atomic(path: str, data: bytes) -> None:
    """temp file + fsync + rename + fsync of the directory."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def flock_nb(path: str, op: int, flags: int = 0) -> tuple[int, str]:
    """Open lock file `path` (created if missing) and flock it with `op` without waiting:
    (fd, "") once taken; (-1, " by pid ... on HOST (mounted at ...)") while someone else
    holds it, naming the holder as published."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | flags, 0o600)
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = DiffDir.lock_holder(fd)
        os.close(fd)
        return -1, holder
    return fd, ""


class DiffDir:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.binding_path = os.path.join(self.path, "binding.json")
        self.lock_path = os.path.join(self.path, "lock")
        self.ns = os.path.join(self.path, "ns")
        self.objects = os.path.join(self.path, "objects")
        self.wal = os.path.join(self.path, "wal")
        self.log = os.path.join(self.path, "pbkfs.log")
        self.lock_fd = -1
        self.published = False

    def create(self) -> None:
        """Create the directory (0700) and its parts; existing content is kept."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise UsageError(f"diff directory {self.path}: exists and is not a directory")
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        os.chmod(self.path, 0o700)
        for d in (self.ns, self.objects):
            os.makedirs(d, mode=0o700, exist_ok=True)

    def lock(self) -> None:
        """Take the diff for this process (released by the kernel when it dies).

        Only the flock: who holds it is written by `publish_lock` once the mount
        is sure to go ahead, so a refused mount leaves the diff as it was.
        """
        fd, holder = flock_nb(self.lock_path, fcntl.LOCK_EX)
        if fd < 0:
            raise UsageError(f"diff directory {self.path} is in use{holder}")
        self.lock_fd = fd

    def publish_lock(self, mountpoint: str) -> None:
        """Record the holder (pid, host, mount point) for refusals and `pbkfs cleanup`."""
        info = LockInfo(os.getpid(), socket.gethostname(), mountpoint,
                        time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        os.ftruncate(self.lock_fd, 0)
        os.pwrite(self.lock_fd, msgspec.json.encode(info), 0)
        self.published = True

    @staticmethod
    def lock_info(fd: int) -> LockInfo | None:
        """Who holds the lock file open at `fd`, as published (None: not published or garbled)."""
        raw = os.pread(fd, 4096, 0)
        if not raw.strip():
            return None
        try:
            return msgspec.json.decode(raw, type=LockInfo)
        except msgspec.DecodeError:
            return None

    @staticmethod
    def lock_holder(fd: int) -> str:
        try:
            info = DiffDir.lock_info(fd)
        except OSError:
            return ""
        if info is None:
            return ""
        return f" by pid {info.pid} on {info.host} (mounted at {info.mountpoint})"

    def unlock(self) -> None:
        if self.lock_fd >= 0:
            if self.published:
                os.ftruncate(self.lock_fd, 0)
            os.close(self.lock_fd)
            self.lock_fd = -1
            self.published = False

    def read_binding(self) -> Binding | None:
        try:
            with open(self.binding_path, "rb") as f:
                return msgspec.json.decode(f.read(), type=Binding)
        except FileNotFoundError:
            return None
        except msgspec.DecodeError as exc:
            raise UsageError(f"{self.binding_path}: not a pbkfs binding ({exc})") from None

    def bind(self, spec: SourceSpec, chain: list[str], local_wal: bool | None,
             resumable: bool = True, wal_bind: bool = False) -> Binding:
        """Check the existing binding against `spec`, or write a new one."""
        existing = self.check_binding(spec, chain, local_wal)
        if existing is not None:
            return existing
        assert local_wal is not None, "a new binding needs a resolved WAL layout"
        b = Binding(spec, chain, time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.time_ns(), local_wal,
                    resumable=resumable, wal_bind=wal_bind and local_wal)
        write_atomic(self.binding_path, msgspec.json.encode(b))
        return b

    def check_binding(
        self, spec: SourceSpec, chain: list[str], local_wal: bool | None
    ) -> Binding | None:
        """The existing binding if `spec` may use this diff (raises if not); None if unbound."""
        existing = self.read_binding()
        if existing is not None:
            if not existing.resumable:
                raise not_resumable_error(self.path)
            if not same_source(existing.source, spec):
                raise UsageError(
                    f"diff directory {self.path} is bound to {describe(existing.source)}; "
                    f"it cannot be used for {describe(spec)} (choose another diff directory)"
                )
            if existing.chain and chain and existing.chain != chain:
                raise UsageError(
                    f"diff directory {self.path}: the chain of {spec.backup_id} changed since "
                    f"the diff was made ({' <- '.join(existing.chain)} then, "
                    f"{' <- '.join(chain)} now)"
                )
            if local_wal is not None and existing.local_wal != local_wal:
                have = "--local-wal" if existing.local_wal else "--wal-through-mount"
                raise UsageError(
                    f"diff directory {self.path} was made with {have}; "
                    f"mount it the same way (or without either flag)"
                )
        return existing
