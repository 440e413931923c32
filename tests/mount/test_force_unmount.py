"""`pbkfs unmount --force` stops exactly the mount's own processes (also after a worker was
restarted), finds a lazily detached mount through its runtime record, and the runtime state
of killed mounts (record, control socket, shared memory) is gone at the next look."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbkfs.mount.runtime import control_path, read_record, record_path
from tests.support.mounting import is_mounted, kill9_mount, mount, pbkfs, stat_json

UNMOUNT_TIMEOUT = 60  # every pbkfs run that touches a mount is bounded


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def mount_processes(work: Path) -> list[int]:
    """Every live frontend or worker of a mount whose paths lie under `work`."""
    needle = str(work).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        cl = _cmdline(int(entry))
        ours = (b"\0-m\0workers\0" in cl and needle in cl) or (
            b"\0-m\0pbkfs.mount.frontend\0" in cl and _holds_file_under(int(entry), work))
        if ours and alive(int(entry)):
            found.append(int(entry))
    return found


def _holds_file_under(pid: int, work: Path) -> bool:
    """A frontend gets its options on stdin: it is known by the files it holds open (the
    diff's lock), not by its command line."""
    prefix = str(work) + "/"
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                return True
        except OSError:
            continue
    return False


def wait_for(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def runtime_files(mnt: Path, shm: str) -> list[str]:
    """What of a mount's runtime state still exists (record, control socket, segment)."""
    paths = [record_path(str(mnt)), control_path(str(mnt)), "/dev/shm/" + shm.lstrip("/")]
    return [p for p in paths if os.path.lexists(p)]


def spawn_as_pid(pid: int, argv: list[str]) -> subprocess.Popen[bytes] | None:
    """Start `argv` as process number `pid` (a freed pid taken by an unrelated program).

    Root moves the kernel's pid cursor (/proc/sys/kernel/ns_last_pid); another process
    of the machine may win the number: a few tries, then None."""
    for _ in range(50):
        if os.path.exists(f"/proc/{pid}"):
            return None
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(pid - 1))
        except OSError:
            return None
        proc = subprocess.Popen(argv)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    return None


class Mounts:
    """Mounts of one test, all under `work`; teardown leaves none of them nor a process."""

    def __init__(self, work: Path, base: Path) -> None:
        self.work = work
        self.base = base
        self.points: list[Path] = []
        self.shms: list[str] = []

    def start(self, name: str) -> tuple[Path, Path]:
        mnt, diff = self.work / name, self.work / f"{name}.diff"
        mnt.mkdir()
        self.points.append(mnt)
        mount(mnt, diff, plain=self.base)
        rec = read_record(str(mnt))
        assert rec is not None
        self.shms.append(rec.shm)
        return mnt, diff

    def teardown(self) -> None:
        for mnt in self.points:  # the polite way first, bounded
            if is_mounted(mnt) and not any(alive(p) and _stopped(p)
                                           for p in mount_processes(self.work)):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    pbkfs("unmount", "-D", str(mnt), timeout=UNMOUNT_TIMEOUT, check=False)
        for pid in mount_processes(self.work):  # then the last resort
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for mnt in self.points:
            if is_mounted(mnt):
                subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True,
                               timeout=30, check=False)
        wait_for(lambda: not mount_processes(self.work), 30, "the test's mounts to die")
        for mnt, shm in zip(self.points, self.shms, strict=False):
            for path in runtime_files(mnt, shm):  # whatever a failed test left behind
                with contextlib.suppress(OSError):
                    os.unlink(path)


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False


@pytest.fixture
def mounts(work: Path, base: Path) -> Iterator[Mounts]:
    m = Mounts(work, base)
    try:
        yield m
    finally:
        m.teardown()


@pytest.fixture
def spare() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Helper processes of a test (holders, decoys, writers): killed afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)
            for pipe in (p.stdin, p.stdout):
                if pipe is not None:
                    pipe.close()


def test_force_after_a_worker_restart_kills_the_live_workers_and_nothing_else(
        work: Path, mounts: Mounts, spare: list[subprocess.Popen[bytes]]) -> None:
    mnt, _diff = mounts.start("mnt")
    with open(mnt / "dir" / "file", "rb") as held:  # busy: a plain unmount is refused
        spare.append(subprocess.Popen(["sleep", "600"], stdin=held))
    rec = read_record(str(mnt))
    assert rec is not None
    victim = rec.workers[0]
    os.kill(victim, signal.SIGKILL)

    def restarted() -> bool:
        w = stat_json(mnt)["workers"][0]
        return bool(w["alive"] and w["pid"] != victim and w["restarts"] >= 1)

    wait_for(restarted, 30, "worker 0 to be restarted")
    live = [w["pid"] for w in stat_json(mnt)["workers"]]
    wait_for(lambda: not alive(victim), 30, "the killed worker to be reaped")
    # the record names the live workers once the restart is done
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = read_record(str(mnt))
        if now is not None and now.workers == live:
            break
        time.sleep(0.05)
    recorded = now.workers if now is not None else None

    # an unrelated program that took the dead worker's pid, and one that took nothing
    reuser = spawn_as_pid(victim, ["sleep", "600"])
    if reuser is not None:
        spare.append(reuser)
    decoy = subprocess.Popen(["sleep", "600"])
    spare.append(decoy)
    ours = mount_processes(work)
    assert rec.pid in ours and set(live) <= set(ours)

    res = pbkfs("unmount", "-D", str(mnt), "--force", timeout=UNMOUNT_TIMEOUT, check=False)
    assert res.returncode == 0, res.stderr
    assert decoy.poll() is None, "the decoy was killed"
    if reuser is not None:
        assert reuser.poll() is None, f"the process that reused pid {victim} was killed"
    assert mount_processes(work) == [], "a process of the mount is still alive"
    assert not is_mounted(mnt)
    assert runtime_files(mnt, rec.shm) == []
    assert recorded == live, f"the record names workers {recorded}, the live ones are {live}"


def test_force_finds_a_hung_lazily_detached_mount_by_its_record(
        work: Path, mounts: Mounts, spare: list[subprocess.Popen[bytes]]) -> None:
    mnt, _diff = mounts.start("mnt")
    rec = read_record(str(mnt))
    assert rec is not None
    script = ("import os, sys\n"
              "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)\n"
              "print('open', flush=True)\n"
              "sys.stdin.readline()\n"
              "os.write(fd, b'x' * 65536)\n"
              "os.fsync(fd)\n")
    writer = subprocess.Popen([sys.executable, "-c", script, str(mnt / "dir" / "new")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    spare.append(writer)
    assert writer.stdout is not None and writer.stdin is not None
    assert writer.stdout.readline() == b"open\n"
    os.kill(rec.pid, signal.SIGSTOP)  # the mount hangs
    writer.stdin.write(b"go\n")
    writer.stdin.flush()
    time.sleep(0.5)
    assert writer.poll() is None, "the writer should be blocked on the hung mount"
    det = subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True, text=True,
                         timeout=30, check=False)
    assert det.returncode == 0, det.stderr
    assert not is_mounted(mnt) and alive(rec.pid)
    plain = pbkfs("unmount", "-D", str(mnt), timeout=UNMOUNT_TIMEOUT, check=False)
    assert plain.returncode != 0 and "--force" in plain.stderr, plain.stderr
    assert f"process {rec.pid} still runs" in plain.stderr, plain.stderr

    res = pbkfs("unmount", "-D", str(mnt), "--force", timeout=UNMOUNT_TIMEOUT, check=False)
    assert res.returncode == 0, res.stderr
    assert str(rec.pid) in res.stdout, res.stdout  # it says which process it stopped
    # The connection is aborted before any signal: a thread of the mount stuck in the kernel
    # on it would survive SIGKILL and keep the connection (and every waiter) forever.
    assert rec.conn, "the runtime record names the mount's FUSE connection"
    assert f"aborted the mount's FUSE connection /sys/fs/fuse/connections/{rec.conn}" in \
        res.stdout, res.stdout
    assert mount_processes(work) == [], "a process of the mount is still alive"
    writer.wait(timeout=30)  # no longer blocked: its request failed with the mount
    # The connection's control directory goes with the last reference to the detached
    # mount: the writer's descriptor, closed as it exits (later than the command's return
    # on a busy machine).
    deadline = time.monotonic() + 30
    while os.path.exists(f"/sys/fs/fuse/connections/{rec.conn}/abort"):
        assert time.monotonic() < deadline, f"FUSE connection {rec.conn} still there"
        time.sleep(0.1)
    assert runtime_files(mnt, rec.shm) == []
    again = pbkfs("unmount", "-D", str(mnt), "--force", timeout=UNMOUNT_TIMEOUT, check=False)
    assert again.returncode != 0 and "not mounted" in again.stderr


@pytest.mark.parametrize("command", ["stat", "unmount", "mount"])
def test_stale_runtime_state_of_killed_mounts_vanishes(
        command: str, work: Path, mounts: Mounts) -> None:
    live, _ = mounts.start("live")
    killed = []
    for name in ("k1", "k2"):
        mnt, diff = mounts.start(name)
        rec = read_record(str(mnt))
        assert rec is not None
        kill9_mount(diff)
        assert len(runtime_files(mnt, rec.shm)) == 3  # a killed mount leaves all of it
        killed.append((mnt, rec.shm))
    live_rec = read_record(str(live))
    assert live_rec is not None

    if command == "stat":
        pbkfs("stat", "-D", str(live), timeout=UNMOUNT_TIMEOUT)
    elif command == "unmount":  # the first killed mount's dead endpoint
        pbkfs("unmount", "-D", str(killed[0][0]), timeout=UNMOUNT_TIMEOUT)
        assert not is_mounted(killed[0][0])
    else:
        mounts.start("fresh")

    left = {str(mnt): runtime_files(mnt, shm) for mnt, shm in killed}
    assert all(not v for v in left.values()), left
    assert runtime_files(live, live_rec.shm) == [
        record_path(str(live)), control_path(str(live)), "/dev/shm/" + live_rec.shm.lstrip("/")]
    assert stat_json(live)["pid"] == live_rec.pid
