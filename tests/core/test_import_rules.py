"""What a process really loads: a worker never trio or pyfuse3, and the launcher, cleanup and
the block-map inspector never pyfuse3 (the import rules themselves: tests/unit/)."""

from __future__ import annotations

import subprocess
import sys

from tests.support.env import REPO


def run(code: str) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter of this virtualenv, from the checkout."""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)


def test_a_worker_process_never_loads_trio_or_pyfuse3() -> None:
    proc = run("import workers.handlers, workers.loop, workers.__main__; import sys; "
               "assert 'trio' not in sys.modules and 'pyfuse3' not in sys.modules, "
               "[m for m in ('trio', 'pyfuse3') if m in sys.modules]")
    assert proc.returncode == 0, proc.stderr


def test_a_worker_process_loads_no_frontend_module() -> None:
    """Nor any pbkfs module a worker has no use for (above view, diff and ipc.protocol)."""
    proc = run("import workers.handlers, workers.loop, workers.__main__; import sys; "
               "above = ('pbkfs.ipc.router', 'pbkfs.fs', 'pbkfs.mount', 'pbkfs.cli', "
               "'pbkfs.recovery'); "
               "bad = sorted(m for m in sys.modules "
               "if any(m == a or m.startswith(a + '.') for a in above)); "
               "assert not bad, bad")
    assert proc.returncode == 0, proc.stderr


def test_launcher_cleanup_and_inspector_never_load_pyfuse3() -> None:
    proc = run("import pbkfs.mount.daemon, pbkfs.mount.cleanup, tools.blockmap.cli; import sys; "
               "assert 'pyfuse3' not in sys.modules")
    assert proc.returncode == 0, proc.stderr


def test_a_worker_process_loads_no_library_it_does_not_use() -> None:
    """Each module is resident memory in every worker of every mount: a worker of a local
    catalog reads no AWS files (configparser), hashes no store keys (hashlib), starts no
    process (subprocess: ctypes.util.find_library runs ldconfig), copies no trees (shutil,
    which loads bz2 and lzma) and finds its defaults without importlib.resources."""
    proc = run("import workers.handlers, workers.loop, workers.__main__; import sys; "
               "unused = ('configparser', 'hashlib', 'subprocess', 'shutil', 'tempfile', "
               "'importlib.resources', 'random', 'bz2', 'lzma', 'trio', 'pyfuse3'); "
               "bad = sorted(m for m in unused if m in sys.modules); "
               "assert not bad, bad")
    assert proc.returncode == 0, proc.stderr
