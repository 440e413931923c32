"""`pbkfs mount` starts the mount process before it parses and plans (pbkfs.mount.launch);
a command that fails before handing the options over leaves no process behind."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.env import REPO


def processes_with(marker: str) -> list[int]:
    """Processes whose environment carries `marker` (children inherit it)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("args", [
    ["mount", "-D", "{tmp}/mnt", "-d", "{tmp}/diff", "-B", "{tmp}"],  # no --instance
    ["mount", "-D", "{tmp}/mnt", "-d", "{tmp}/diff", "--no-such-option"],  # click refuses
    ["mount", "-D", "{tmp}/mnt", "-d", "{tmp}/diff", "-B", "{tmp}/nothing", "--instance", "x"],
])
def test_a_failed_mount_command_leaves_no_process(tmp_path: Path, args: list[str]) -> None:
    marker = f"PBKFS_TEST_LAUNCH={uuid.uuid4().hex}"
    env = dict(os.environ, PBKFS_TEST_LAUNCH=marker.split("=")[1])
    proc = subprocess.run([sys.executable, "-m", "pbkfs.cli.entry",
                           *[a.format(tmp=tmp_path) for a in args]],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    assert processes_with(marker) == []
    assert not (tmp_path / "diff").exists()


def test_early_launch_only_for_a_background_mount() -> None:
    from pbkfs.mount import launch

    for args in (["show"], ["mount", "--help"], ["mount", "-D", "m", "--foreground"], []):
        launch.start_early(args)
        assert launch.take_early() is None, args
    launch.start_early(["mount", "-D", "m"])
    started = launch.take_early()
    assert started is not None
    try:
        assert processes_of_pid(started.pid)
    finally:
        started.abandon()
    assert not processes_of_pid(started.pid)


def processes_of_pid(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")
