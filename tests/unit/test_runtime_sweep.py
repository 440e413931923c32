"""The runtime directory's sweep: dead mounts' records and sockets go, a live mount's stay."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pbkfs.mount import runtime
from pbkfs.mount.runtime import RuntimeRecord, control_path, record_path, sweep_stale, write_record
from pbkfs.proc import start_time

NO_SUCH_PID = 2**22 + 12345  # above any pid_max


@pytest.fixture
def rundir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(runtime, "runtime_dir", lambda: str(tmp_path))
    return tmp_path


def record(mnt: str, pid: int, started: int) -> RuntimeRecord:
    rec = RuntimeRecord(pid, mnt, "/diff", "", [], control_path(mnt), started=started)
    write_record(rec)
    Path(rec.control).write_bytes(b"")  # stands for the socket
    return rec


def test_dead_and_reused_pids_go_the_live_mount_stays(rundir: Path) -> None:
    me = os.getpid()
    record("/live", me, start_time(me))
    record("/dead", NO_SUCH_PID, 1)
    record("/reused", me, start_time(me) + 1)  # our pid, but not the process that wrote it
    notes = sweep_stale()
    assert len(notes) == 2 and all("dead mount process" in n for n in notes), notes
    assert sorted(os.listdir(rundir)) == sorted(
        os.path.basename(p) for p in (record_path("/live"), control_path("/live")))
    assert sweep_stale() == []


def test_only_the_given_mount_point_is_swept(rundir: Path) -> None:
    record("/a", NO_SUCH_PID, 1)
    record("/b", NO_SUCH_PID, 1)
    assert len(sweep_stale("/a")) == 1
    assert not os.path.exists(record_path("/a")) and not os.path.exists(control_path("/a"))
    assert os.path.exists(record_path("/b")) and os.path.exists(control_path("/b"))


def test_leftovers_of_dead_writers_and_lone_sockets_go(rundir: Path) -> None:
    mine = f"{record_path('/x')}.{os.getpid()}.tmp"  # a writer at work: stays
    theirs = f"{record_path('/y')}.{NO_SUCH_PID}.tmp"
    for p in (mine, theirs, control_path("/z")):
        Path(p).write_bytes(b"")
    notes = sweep_stale()
    assert notes == [f"removed the control socket {control_path('/z')} of a dead mount"]
    assert os.listdir(rundir) == [os.path.basename(mine)]


def test_a_record_replaced_while_judged_stays(rundir: Path) -> None:
    path = record_path("/m")
    Path(path).write_bytes(b"old")
    judged = os.stat(path).st_ino
    keep = os.open(path, os.O_RDONLY)  # the judged file's inode stays taken
    try:
        Path(path + ".new").write_bytes(b"new")
        os.rename(path + ".new", path)  # a new mount of /m wrote its record meanwhile
        assert not runtime._drop_if_same(path, judged)
    finally:
        os.close(keep)
    assert Path(path).read_bytes() == b"new" and os.listdir(rundir) == [os.path.basename(path)]
