"""pbkfs installed from a wheel (not editable) works outside the checkout.

The project is copied, built into a wheel and installed into a fresh virtualenv;
the virtualenv sees the test environment's dependencies through a .pth line (the
dependencies only: that directory's own .pth files, among them the editable
install of the checkout, are not processed). Every command then runs from a
directory outside the checkout with a clean environment, so only the installed
package can answer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ["pyproject.toml", "README.md", "conf", "pbkfs", "workers", "tools"]


class Installed:
    def __init__(self, venv: Path, cwd: Path, deps: set[str]) -> None:
        self.venv = venv
        self.deps = deps
        self.python = venv / "bin" / "python"
        self.pbkfs = venv / "bin" / "pbkfs"
        self.cwd = cwd
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("PYTHON", "PBKFS_", "VIRTUAL_ENV"))}

    def run(self, *args: str | Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(a) for a in args], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)
        assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n" \
                                     f"{proc.stderr}"
        return proc


def run(*args: str | Path) -> None:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n" \
                                 f"{proc.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("install")
    src = base / "src"
    src.mkdir()
    junk = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info", "build", "bench_results")
    for name in SOURCES:  # a copy: building writes build/ and *.egg-info next to the sources
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, symlinks=True, ignore=junk)
        else:
            shutil.copy2(REPO / name, src / name)
    assert (src / "pbkfs" / "defaults").is_symlink()
    wheels = base / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
        "-q", "-w", wheels, src)
    (wheel,) = wheels.glob("pbkfs-*.whl")
    venv = base / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install",
        "--no-deps", "--no-index", "-q", wheel)
    purelib = subprocess.run(
        [venv / "bin" / "python", "-c",
         "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "zz-test-dependencies.pth").write_text("".join(f"{d}\n" for d in deps))
    cwd = base / "elsewhere"
    cwd.mkdir()
    yield Installed(venv, cwd, deps)


def test_installed_package_is_the_one_running(installed: Installed) -> None:
    out = installed.run(installed.python, "-c", (
        "import json, sys, pbkfs, pbkfs.codecs._native, workers; "
        "print(json.dumps([pbkfs.__file__, pbkfs.codecs._native.__file__, workers.__file__, "
        "sys.path]))"
    )).stdout
    *files, path = json.loads(out)
    for file in files:
        assert file.startswith(f"{installed.venv}/"), files
    # nothing of the checkout is importable, bar the dependencies' directory (if in .venv)
    assert {p for p in path if p.startswith(str(REPO))} <= installed.deps, path


def test_installed_package_finds_its_default_config(installed: Installed) -> None:
    out = installed.run(installed.python, "-c", (
        "import msgspec\n"
        "from importlib import resources\n"
        "from pbkfs.config import CONF_DIR, DEFAULT_CONFIG_FILE, Config, load_config, "
        "postgresql_settings\n"
        "print(CONF_DIR)\n"
        "print(resources.files('pbkfs').joinpath('defaults', 'pbkfs.toml').is_file())\n"
        "shipped = load_config(str(DEFAULT_CONFIG_FILE))\n"
        "print(msgspec.to_builtins(shipped) == msgspec.to_builtins(Config()))\n"
        "print(dict(postgresql_settings())['archive_mode'])\n"
    )).stdout.split()
    assert out[0].startswith(str(installed.venv)) and not Path(out[0]).is_symlink(), out
    assert out[1:] == ["True", "True", "off"], out
    for name in ("pbkfs.toml", "postgresql.pbkfs.conf"):
        assert Path(out[0], name).read_bytes() == (REPO / "conf" / name).read_bytes()


def test_installed_cli_runs(installed: Installed, fixtures_dir: Path) -> None:
    out = installed.run(installed.pbkfs, "--help").stdout
    for command in ("mount", "unmount", "show", "verify"):
        assert command in out
    out = installed.run(installed.pbkfs, "show", "-B", fixtures_dir / "pg15" / "catalog",
                        "--instance", "main").stdout
    assert "BACKUP INSTANCE 'main'" in out
    assert "TP2KB6 <- TP2KBJ <- TP2KBV <- TP2KC3" in out

