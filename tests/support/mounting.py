"""Helpers for tests that mount: start `pbkfs mount`, always unmount, never hang."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.support.env import REPO, require

MOUNT_TIMEOUT = 180


def fuse_available() -> bool:
    from shutil import which

    return os.path.exists("/dev/fuse") and which("fusermount3") is not None


def require_fuse() -> None:
    require(fuse_available(), "/dev/fuse and fusermount3")


def pbkfs(*args: str, timeout: float = MOUNT_TIMEOUT, check: bool = True
          ) -> subprocess.CompletedProcess[str]:
    """Run the pbkfs CLI in a child process (as a user would)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pbkfs.cli.entry", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"pbkfs {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def is_mounted(mnt: Path) -> bool:
    want = os.path.abspath(mnt)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == want for line in f)


def mount_pids(diff: Path) -> list[int]:
    """The mount process and its workers (from the diff's log-free runtime record)."""

    out = []
    for mnt_rec in _records():
        if os.path.abspath(mnt_rec.diff) == os.path.abspath(diff):
            out += [mnt_rec.pid, *mnt_rec.workers]
    return out


def _records() -> list:  # type: ignore[type-arg]
    import msgspec

    from pbkfs.mount.runtime import RuntimeRecord, runtime_dir

    recs = []
    d = runtime_dir()
    if os.path.isdir(d):
        for name in os.listdir(d):
            if name.endswith(".json"):
                try:
                    with open(os.path.join(d, name), "rb") as f:
                        recs.append(msgspec.json.decode(f.read(), type=RuntimeRecord))
                except (OSError, msgspec.DecodeError):
                    pass
    return recs


def force_unmount(mnt: Path, diff: Path | None = None) -> None:
    """Teardown of last resort: lazy unmount and kill what is left."""
    pids = mount_pids(diff) if diff is not None else []
    if is_mounted(mnt):
        subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True, timeout=30)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def mount(
    mnt: Path,
    diff: Path,
    *,
    plain: Path | None = None,
    store: Path | str | None = None,
    instance: str = "",
    backup_id: str = "",
    workers: int = 2,
    extra: Sequence[str] = (),
) -> None:
    args = ["mount", "-D", str(mnt), "-d", str(diff), "--workers", str(workers)]
    if plain is not None:
        args += ["--plain-base", str(plain)]
    elif store is not None:
        args += ["-B", str(store), "--instance", instance, "-i", backup_id]
    # neither: a remount or a branch (--from in `extra`), the binding names the source
    pbkfs(*args, *extra)
    assert is_mounted(mnt)


def unmount(mnt: Path, diff: Path | None = None) -> None:
    try:
        pbkfs("unmount", "-D", str(mnt))
    finally:
        if is_mounted(mnt):
            force_unmount(mnt, diff)


@contextlib.contextmanager
def mounted(mnt: Path, diff: Path, **kwargs: object) -> Iterator[Path]:
    """A mount for the duration of the block; always gone afterwards."""
    mnt.mkdir(parents=True, exist_ok=True)
    try:
        mount(mnt, diff, **kwargs)  # type: ignore[arg-type]
        yield mnt
    finally:
        if is_mounted(mnt):
            try:
                unmount(mnt, diff)
            except Exception:
                force_unmount(mnt, diff)
                raise


def kill9_mount(diff: Path) -> list[int]:
    """kill -9 the mount process and every worker of the mount using `diff`."""
    pids = mount_pids(diff)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
            except ChildProcessError:
                pass
            if _exited(pid):
                break
            time.sleep(0.02)
    return pids


def _exited(pid: int) -> bool:
    """Gone, or a zombie whose every thread has exited too.

    A killed multi-threaded process shows its leader as a zombie while other
    threads are still exiting and still hold its files (the /dev/fuse fd).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                return False
        return all(_thread_dead(pid, tid) for tid in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return True


def _thread_dead(pid: int, tid: str) -> bool:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def cleanup(diff: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`pbkfs cleanup -d diff`, whatever its exit status; never a traceback."""
    proc = pbkfs("cleanup", "-d", str(diff), *extra, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def stat_json(mnt: Path, *extra: str) -> dict[str, Any]:
    """`pbkfs stat -D mnt --format json`, decoded."""
    out: dict[str, Any] = json.loads(
        pbkfs("stat", "-D", str(mnt), "--format", "json", *extra).stdout)
    return out


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `path` for the block: a file system that fills up."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True, timeout=30)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)
