"""Configuration files and log formats."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import msgspec
import pytest

from pbkfs.config import REPO_CONF, Config, load_config, postgresql_settings
from pbkfs.errors import UsageError
from pbkfs.logsetup import setup_logging


def test_shipped_file_documents_the_defaults() -> None:
    shipped = load_config(str(REPO_CONF / "pbkfs.toml"))
    assert msgspec.to_builtins(shipped) == msgspec.to_builtins(Config())


def test_no_file_means_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PBKFS_CONFIG", raising=False)
    monkeypatch.setattr("pbkfs.config.SYSTEM_CONFIG", Path("/nonexistent/pbkfs.toml"))
    assert load_config() == Config()


def test_overrides_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[mount]\nworkers = 3\n[log]\nformat = 'json'\n")
    monkeypatch.setenv("PBKFS_CONFIG", str(f))
    cfg = load_config()
    assert cfg.mount.workers == 3 and cfg.log.format == "json" and cfg.cache.open_files == 64
    f.write_text("[mount]\nworkrs = 3\n")
    with pytest.raises(UsageError, match="workrs"):
        load_config(str(f))
    f.write_text("[log]\nformat = 'xml'\n")
    with pytest.raises(UsageError, match=str(f)):
        load_config(str(f))
    f.write_text("[mount\n")
    with pytest.raises(UsageError, match="TOML"):
        load_config(str(f))


def test_postgresql_settings() -> None:
    settings = dict(postgresql_settings())
    assert settings["archive_mode"] == "off"
    assert "primary_conninfo" in settings


def test_json_log_lines(tmp_path: Path) -> None:
    log_file = tmp_path / "pbkfs.log"
    setup_logging("json", "info", str(log_file))
    try:
        logging.getLogger("pbkfs.test").error("cannot write base/5/1")
        logging.getLogger("pbkfs.test").debug("hidden")
        for h in logging.getLogger().handlers:
            h.flush()
        lines = [json.loads(x) for x in log_file.read_text().splitlines()]
    finally:
        for h in list(logging.getLogger().handlers):
            logging.getLogger().removeHandler(h)
            h.close()
    assert len(lines) == 1
    assert lines[0]["level"] == "error" and lines[0]["message"] == "cannot write base/5/1"
    assert lines[0]["logger"] == "pbkfs.test" and "time" in lines[0]
