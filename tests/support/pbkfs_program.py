"""Programs the PostgreSQL server itself runs (restore_command, archive_command) in tests.

The server runs as the OS user `postgres`, which may not be able to use the test
virtualenv's interpreter. Each wrapper made here is a small shell script, in a
directory postgres can read, that runs this checkout's code with a system Python
of the same major.minor version and the virtualenv's packages on PYTHONPATH:

* `server_side_pbkfs()`: `pbkfs archive-get ...` (for restore_command);
* `server_side_mkbackup()`: `mkbackup archive-push ...` (for archive_command).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from tests.support.env import REPO, require
from tests.support.postgres import PG_USER, pg_workdir


def server_python() -> str | None:
    """A Python of this interpreter's major.minor that the postgres OS user can run."""
    want = f"{sys.version_info.major}.{sys.version_info.minor}"
    seen = []
    for cand in (sys.executable, shutil.which(f"python{want}"), f"/usr/bin/python{want}",
                 "/usr/bin/python3"):
        if not cand or cand in seen or not os.path.exists(cand):
            continue
        seen.append(cand)
        proc = subprocess.run(["runuser", "-u", PG_USER, "--", cand, "-c",
                               "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode == 0 and proc.stdout.strip() == want:
            return cand
    return None


@contextlib.contextmanager
def server_side_program(name: str, module: str, attr: str, skip_args: int,
                        prog_name: str) -> Iterator[Path]:
    """An executable `name` running click command `module.attr` with the wrapper's arguments
    (the first `skip_args` of them dropped: the subcommand word of a single command)."""
    python = server_python()
    require(python is not None, "a Python the postgres user can run, same version as the tests")
    assert python is not None
    with pg_workdir(f"{name}-bin-") as work:
        program = work / name
        paths = f"{REPO}:{sysconfig.get_paths()['purelib']}"
        program.write_text(
            "#!/bin/sh\n"
            f"PYTHONPATH='{paths}' exec '{python}' -c 'import sys; "
            f"from {module} import {attr}; "
            f"{attr}.main(sys.argv[{1 + skip_args}:], prog_name=\"{prog_name}\")' \"$@\"\n")
        program.chmod(0o755)
        yield program


@contextlib.contextmanager
def server_side_pbkfs() -> Iterator[Path]:
    """`pbkfs archive-get` for restore_command (called as `<program> archive-get ...`)."""
    with server_side_program("pbkfs", "pbkfs.cli.archive_get", "archive_get", 1,
                             "pbkfs archive-get") as program:
        yield program


@contextlib.contextmanager
def server_side_mkbackup() -> Iterator[Path]:
    """`python -m tools.mkbackup` for archive_command (called as `<program> archive-push ...`)."""
    with server_side_program("mkbackup", "tools.mkbackup.cli", "main", 0,
                             "python -m tools.mkbackup") as program:
        yield program


@contextlib.contextmanager
def restore_program() -> Iterator[Path]:
    """`server_side_pbkfs` named by $PBKFS_PROGRAM for the mounts made meanwhile (their
    restore_command runs it)."""
    with server_side_pbkfs() as prog:
        saved = os.environ.get("PBKFS_PROGRAM")
        os.environ["PBKFS_PROGRAM"] = str(prog)
        try:
            yield prog
        finally:
            if saved is None:
                os.environ.pop("PBKFS_PROGRAM", None)
            else:
                os.environ["PBKFS_PROGRAM"] = saved
