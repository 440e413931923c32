"""pbkfs configuration: a TOML file of defaults (conf/pbkfs.toml), overridden by flags.

Decoded with msgspec into typed Structs, so a misspelt key or a wrong type is an
error naming the file and the key instead of a silently ignored setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import msgspec

from pbkfs.errors import UsageError

SYSTEM_CONFIG = Path("/etc/pbkfs/pbkfs.toml")
REPO_CONF = Path(__file__).resolve().parent.parent / "conf"


class MountConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    workers: int = 0
    owner: str = ""
    entry_timeout: float = 300.0
    attr_timeout: float = 300.0
    apply_postgresql_conf: bool = True
    timeout: float = 60.0


class CacheConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    page_index_mb: int = 64
    open_files: int = 64


class LogConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"
    file: str = ""


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    mount: MountConfig = msgspec.field(default_factory=MountConfig)
    cache: CacheConfig = msgspec.field(default_factory=CacheConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)

    def effective_workers(self) -> int:
        return self.mount.workers or (os.cpu_count() or 1)


def config_path(explicit: str | None = None) -> Path | None:
    """Which file to read: --config, else $PBKFS_CONFIG, else the system file if present."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("PBKFS_CONFIG")
    if env:
        return Path(env)
    return SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else None


def load_config(explicit: str | None = None) -> Config:
    """The configuration in effect; defaults when no file is found."""
    path = config_path(explicit)
    if path is None:
        return Config()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"config file {path}: {exc.strerror}") from exc
    try:
        config = msgspec.toml.decode(data, type=Config)
    except msgspec.ValidationError as exc:
        raise UsageError(f"config file {path}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise UsageError(f"config file {path}: not valid TOML: {exc}") from None
    if config.mount.workers < 0:
        raise UsageError(f"config file {path}: mount.workers must be 0 (one per CPU) or more")
    return config


def postgresql_settings(path: Path | None = None) -> list[tuple[str, str]]:
    """(name, value) pairs of conf/postgresql.pbkfs.conf, in file order."""
    from pbkfs.catalog.keyvalue import read_keyvalue

    source = path or REPO_CONF / "postgresql.pbkfs.conf"
    values = read_keyvalue(source)
    return [(k.replace("-", "_"), v) for k, v in values.items()]
