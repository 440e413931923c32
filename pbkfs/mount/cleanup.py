"""Wiping a diff directory (`pbkfs cleanup`): everything a mount kept there, and its binding.

Safety rules, in the order they are checked:

* a diff whose lock is held (flock) by a live mount is never touched, `--force`
  or not: the refusal names the holder (pid, host, mount point);
* a lock that names another host cannot be checked from here: refused unless
  `--force`;
* a directory without a binding is wiped only if it holds nothing but pbkfs's
  own names (a mount that died before binding, a half-deleted diff), and only
  with `--force`; a directory with anything else in it is not a pbkfs diff and
  is refused; an empty directory is left as it is;
* a diff other diffs are stacked on (branches, `pbkfs.diff.layers`) is refused,
  naming them; wiping a branch removes its entry from its parent;
* entries are removed without following symlinks (`shutil.rmtree` works on
  directory file descriptors here), so a symlink in the diff is removed, never
  what it points to.

The lock stays held while the wipe runs and is removed last, so no mount can
start on a half-wiped diff. A reset renames every entry into `.trash.<pid>.<ns>`
(durable before the lock goes) and deletes that in a detached process, so it
takes the same time whatever the diff holds; leftovers of an interrupted
deletion go with the next reset or cleanup. The directory itself is kept (with its mode and
owner), empty.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import stat
import time

import msgspec

from pbkfs.diff.directory import DiffDir, LockInfo, flock_nb, write_atomic
from pbkfs.diff.layers import refuse_if_parent, unregister_child
from pbkfs.errors import UsageError
from pbkfs.fsutil import fsync_dir
from pbkfs.proc import pid_alive

# Everything a mount puts into a diff directory (see diffdir.py), and its temporary names.
OWN_NAMES = {"binding.json", "lock", "ns", "objects", "wal", "pbkfs.log", "children"}


TRASH_PREFIX = ".trash."  # what a reset moved aside, deleted in the background


def _own(name: str) -> bool:
    return (name in OWN_NAMES or name.startswith("binding.json.tmp.")
            or name.startswith(TRASH_PREFIX))


def _delete_in_background(path: str) -> None:
    """rmtree `path` in a detached grandchild: the caller returns at once, whatever the
    size of the tree (a reset takes the same time for any diff)."""
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)  # the child exits at once; the grandchild belongs to init
        return
    try:
        os.setsid()
        if os.fork() == 0:
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):  # a caller reading our output must not wait for this
                os.dup2(devnull, fd)
            shutil.rmtree(path, ignore_errors=True)
    finally:
        os._exit(0)


def _take_lock(diff: DiffDir) -> tuple[int, LockInfo | None]:
    """flock the diff's lock file (created if missing); refuse if a live mount holds it."""
    try:
        st = os.lstat(diff.lock_path)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{diff.lock_path} is not a regular file; refusing to touch "
                             f"{diff.path}")
    except FileNotFoundError:
        pass
    fd, holder = flock_nb(diff.lock_path, fcntl.LOCK_EX, os.O_NOFOLLOW)
    if fd < 0:
        raise UsageError(f"diff directory {diff.path} is in use{holder}; unmount it first "
                         f"(pbkfs unmount -D MOUNTPOINT)")
    return fd, DiffDir.lock_info(fd)


def _stale_runtime(diff_path: str) -> list[str]:
    """Runtime records (and shared memory) of dead mounts of this diff: removed."""
    from pbkfs.mount.runtime import RuntimeRecord, runtime_dir

    notes: list[str] = []
    d = runtime_dir()
    if not os.path.isdir(d):
        return notes
    for name in os.listdir(d):
        if not name.endswith(".json"):
            continue
        path = os.path.join(d, name)
        try:
            with open(path, "rb") as f:
                rec = msgspec.json.decode(f.read(), type=RuntimeRecord)
        except (OSError, msgspec.DecodeError):
            continue
        if os.path.abspath(rec.diff) != diff_path or pid_alive(rec.pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        try:
            import posix_ipc

            posix_ipc.unlink_shared_memory(rec.shm)
        except Exception:  # already gone
            pass
        notes.append(f"removed the runtime record of dead mount process {rec.pid} "
                     f"(mount point {rec.mountpoint})")
    return notes


def wipe(path: str, force: bool = False, keep_binding: bool = False) -> list[str]:
    """Wipe the diff directory at `path`; returns what was done, one line each.

    `keep_binding` (`pbkfs reset`): every change goes, the binding stays, so the next
    mount starts as the first mount of that backup did (recovery files, the WAL copy)."""
    if not os.path.lexists(path):
        raise UsageError(f"diff directory {path} does not exist")
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise UsageError(f"diff directory {path} is not a directory")
    diff = DiffDir(real)
    notes: list[str] = []
    names = sorted(os.listdir(real))
    if not names:
        return [f"{real} is empty; nothing to clean"]
    binding_state = "ok"
    parent = ""
    try:
        binding = diff.read_binding()
        if binding is None:
            binding_state = "missing"
        else:
            parent = binding.parent
    except (UsageError, OSError) as exc:
        binding_state = f"unreadable ({exc})"
    # Branches read through this diff's objects: it stays as they saw it.
    refuse_if_parent(diff, "reset" if keep_binding else "cleanup")
    if keep_binding and binding_state != "ok":
        raise UsageError(f"{real}: binding.json {binding_state}: nothing to reset to "
                         "(pbkfs cleanup wipes a broken diff)")
    if binding_state != "ok":
        foreign = [n for n in names if not _own(n)]
        if foreign:
            shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
            raise UsageError(f"{real} is not a pbkfs diff directory (binding.json "
                             f"{binding_state}; it holds {shown}): refusing to delete anything")
    had_lock = os.path.lexists(diff.lock_path)
    if binding_state != "ok" and not force and not had_lock:
        raise UsageError(f"{real}: binding.json {binding_state}, but pbkfs state is there "
                         f"({', '.join(names)}): a broken diff; --force wipes it")
    fd, info = _take_lock(diff)  # a live mount (even one still starting) is refused here
    if binding_state != "ok" and not force:
        os.close(fd)
        raise UsageError(f"{real}: binding.json {binding_state}, but pbkfs state is there "
                         f"({', '.join(names)}): a broken diff; --force wipes it")
    try:
        if info is not None:
            if info.host != socket.gethostname():
                if not force:
                    raise UsageError(
                        f"diff directory {real} is locked by pid {info.pid} on host {info.host} "
                        f"(mounted at {info.mountpoint}); this host cannot check that mount: "
                        f"--force if it is gone")
                notes.append(f"ignored the lock of pid {info.pid} on host {info.host}")
            else:
                notes.append(f"recovered the stale lock of pid {info.pid} (process gone; was "
                             f"mounted at {info.mountpoint})")
                from pbkfs.mount.mountinfo import is_mounted

                if is_mounted(info.mountpoint):
                    notes.append(f"{info.mountpoint} is still attached (its process died): "
                                 f"run pbkfs unmount -D {info.mountpoint}")
        removed = 0
        # A reset moves everything aside with one rename each (durable before the lock
        # goes) and deletes it in the background; a cleanup deletes it here.
        trash = os.path.join(real, f"{TRASH_PREFIX}{os.getpid()}.{time.time_ns()}")
        if keep_binding:
            os.mkdir(trash, 0o700)
        for name in os.listdir(real):
            p = os.path.join(real, name)
            if name == "lock" or p == trash or (keep_binding and name == "binding.json"):
                continue
            if not name.startswith(TRASH_PREFIX):
                removed += 1
            if keep_binding:  # (an earlier reset's leftovers go along)
                os.rename(p, os.path.join(trash, name))
            elif stat.S_ISDIR(os.lstat(p).st_mode):
                shutil.rmtree(p)  # fd-based: symlinks inside are unlinked, never followed
            else:
                os.unlink(p)
        if keep_binding:
            binding = diff.read_binding()
            if binding is not None and not binding.resumable:  # --no-wal: nothing is lost now
                write_atomic(diff.binding_path,
                             msgspec.json.encode(msgspec.structs.replace(binding,
                                                                         resumable=True)))
            fsync_dir(trash)
        os.unlink(diff.lock_path)
        fsync_dir(real)
        if keep_binding:
            _delete_in_background(trash)
        if parent and not keep_binding:
            unregister_child(parent, real)
        notes += _stale_runtime(real)
        if keep_binding:
            notes.append(f"reset {real} ({removed} entries removed; the binding is kept: the "
                         "next mount starts from the backup as the first did)")
        else:
            notes.append(f"wiped {real} ({removed} entries and the lock; the directory is "
                         "kept)")
    finally:
        os.close(fd)
    return notes


assert shutil.rmtree.avoids_symlink_attacks, "this platform's rmtree follows symlinks"
