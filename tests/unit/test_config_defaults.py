"""Every setting of conf/pbkfs.toml takes effect, each default is defined once, and one
function checks worker counts."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from pbkfs.cli.main import cli
from pbkfs.config import (
    CACHE_TIMEOUT,
    CONF_DIR,
    DEFAULT_CONFIG_FILE,
    OPEN_FILES,
    PAGE_INDEX_MB,
    CacheConfig,
    Config,
    load_config,
    postgresql_settings,
    worker_count,
)
from pbkfs.errors import UsageError
from pbkfs.ipc.protocol import WorkerSpec
from pbkfs.ipc.router import Router
from pbkfs.mount.options import MountOptions
from pbkfs.view.chainview import ChainView
from pbkfs.view.source import SourceSpec, open_source

PLAIN = SourceSpec("plain", path="/nonexistent")


def shipped() -> dict[str, Any]:
    return msgspec.toml.decode(DEFAULT_CONFIG_FILE.read_bytes())


def test_the_defaults_are_the_shipped_conf_files() -> None:
    assert CONF_DIR.is_dir()
    assert CONF_DIR.resolve() == (Path(__file__).resolve().parents[2] / "conf").resolve()
    assert sorted(p.name for p in CONF_DIR.iterdir()) == ["pbkfs.toml", "postgresql.pbkfs.conf"]


def test_one_default_for_entry_and_attr_timeout() -> None:
    from pbkfs.mount.fuseops import Operations

    ops_defaults = inspect.signature(Operations.__init__).parameters
    opts = MountOptions(source=PLAIN, mountpoint="/m", diff="/d", workers=1)
    for name in ("entry_timeout", "attr_timeout"):
        values = {
            "config": getattr(Config().mount, name),
            "conf/pbkfs.toml": shipped()["mount"][name],
            "MountOptions": getattr(opts, name),
            "Operations": ops_defaults[name].default,
        }
        assert set(values.values()) == {CACHE_TIMEOUT}, (name, values)


def test_one_default_for_each_cache_bound() -> None:
    opts = MountOptions(source=PLAIN, mountpoint="/m", diff="/d", workers=1)
    spec = WorkerSpec(0, PLAIN, "/objects", "")
    assert shipped()["cache"] == {"page_index_mb": PAGE_INDEX_MB, "open_files": OPEN_FILES}
    assert Config().cache == opts.caches == spec.caches == CacheConfig()
    params = inspect.signature(ChainView.__init__).parameters
    assert params["index_cache_bytes"].default == CacheConfig().page_index_bytes
    assert params["open_files"].default == CacheConfig().open_files


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[MountOptions]:
    """`pbkfs mount` up to handing its options to the mount process (which is not started)."""
    seen: list[MountOptions] = []

    def start_background(opts: MountOptions, timeout: float = 0, launch: Any = None) -> int:
        seen.append(msgspec.json.decode(msgspec.json.encode(opts), type=MountOptions))
        return 12345

    monkeypatch.setattr("pbkfs.mount.daemon.start_background", start_background)
    monkeypatch.delenv("PBKFS_CONFIG", raising=False)
    return seen


def run_mount(tmp_path: Path, *args: str) -> Any:
    (tmp_path / "base").mkdir(exist_ok=True)
    return CliRunner().invoke(cli, ["mount", "-D", str(tmp_path / "mnt"),
                                    "-d", str(tmp_path / "diff"),
                                    "--plain-base", str(tmp_path / "base"), *args])


def test_mount_options_carry_the_configured_settings(
        tmp_path: Path, started: list[MountOptions]) -> None:
    conf = tmp_path / "pbkfs.toml"
    conf.write_text("[mount]\nworkers = 3\nentry_timeout = 7.5\nattr_timeout = 2.0\n"
                    "[cache]\npage_index_mb = 3\nopen_files = 5\n")
    result = run_mount(tmp_path, "--config", str(conf))
    assert result.exit_code == 0, result.output
    (opts,) = started
    assert opts.workers == 3
    assert (opts.entry_timeout, opts.attr_timeout) == (7.5, 2.0)
    assert opts.caches == CacheConfig(page_index_mb=3, open_files=5)


def test_workers_receive_the_cache_bounds() -> None:
    caches = CacheConfig(page_index_mb=3, open_files=5)
    router = Router(2, PLAIN, "/objects", "", caches=caches)
    for spec in router.specs:  # as the worker decodes its argument
        decoded = msgspec.json.decode(msgspec.json.encode(spec), type=WorkerSpec)
        assert decoded.caches == caches
    assert all(s.caches == CacheConfig() for s in Router(1, PLAIN, "/objects", "").specs)


def test_views_are_bounded_by_the_cache_settings(fixtures_dir: Path) -> None:
    spec = SourceSpec("catalog", store=str(fixtures_dir / "pg15" / "catalog"), instance="main",
                      backup_id="TP2KB6")
    source = open_source(spec, CacheConfig(page_index_mb=3, open_files=5))
    try:
        assert source.view.indexes.capacity == 3 << 20
        assert source.view.fds.capacity == 5
    finally:
        source.close()
    source = open_source(spec)
    try:
        assert source.view.indexes.capacity == PAGE_INDEX_MB << 20
        assert source.view.fds.capacity == OPEN_FILES
    finally:
        source.close()


@pytest.mark.parametrize("key", ["page_index_mb", "open_files"])
def test_cache_bounds_must_be_positive(tmp_path: Path, key: str) -> None:
    conf = tmp_path / "pbkfs.toml"
    conf.write_text(f"[cache]\n{key} = 0\n")
    with pytest.raises(UsageError, match=f"cache.{key}"):
        load_config(str(conf))


def test_worker_count() -> None:
    assert worker_count(4) == 4
    assert worker_count(0, zero_means_cpus=True) == (os.cpu_count() or 1)
    assert worker_count(2, zero_means_cpus=True) == 2
    for n in (0, -3):
        with pytest.raises(UsageError, match=f"--workers {n}: need at least 1"):
            worker_count(n)
    with pytest.raises(UsageError, match=r"mount.workers -1: need 0 \(one per CPU\) or more"):
        worker_count(-1, "mount.workers", zero_means_cpus=True)


def test_every_worker_count_goes_through_worker_count(
        tmp_path: Path, started: list[MountOptions]) -> None:
    conf = tmp_path / "pbkfs.toml"
    conf.write_text("[mount]\nworkers = -2\n")
    with pytest.raises(UsageError, match=f"config file {conf}: mount.workers -2"):
        load_config(str(conf))
    conf.write_text("[mount]\nworkers = 0\n")
    assert load_config(str(conf)).effective_workers() == (os.cpu_count() or 1)
    with pytest.raises(UsageError, match="--workers 0"):
        Router(0, PLAIN, "/objects", "")
    for flag in ("0", "-3"):
        result = run_mount(tmp_path, "--workers", flag)
        assert result.exit_code != 0 and f"--workers {flag}: need at least 1" in result.output
    assert not started
    result = run_mount(tmp_path, "--config", str(conf))
    assert result.exit_code == 0, result.output
    assert started[0].workers == (os.cpu_count() or 1)


def test_postgresql_settings_syntax(tmp_path: Path) -> None:
    conf = tmp_path / "postgresql.conf"
    conf.write_text("# comment\n\n  Archive_Mode = off  # trailing\n"
                    "primary_conninfo = ''\nmsg = 'it''s a \\'test\\''\n"
                    "work_mem 64MB\narchive_mode = 'on'\n")
    assert postgresql_settings(conf) == [
        ("archive_mode", "on"), ("primary_conninfo", ""), ("msg", "it's a 'test'"),
        ("work_mem", "64MB")]
    for bad in ("archive_mode =\n", "x = 'open\n", "= 1\n"):
        conf.write_text(bad)
        with pytest.raises(UsageError, match=f"{conf}:1: expected"):
            postgresql_settings(conf)
    with pytest.raises(UsageError, match="cannot read"):
        postgresql_settings(tmp_path / "missing.conf")
    assert dict(postgresql_settings())["allow_in_place_tablespaces"] == "on"
