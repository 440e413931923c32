"""pbkfs configuration: a TOML file of defaults (conf/pbkfs.toml), overridden by flags.

Decoded with msgspec into typed Structs, so a misspelt key or a wrong type is an
error naming the file and the key instead of a silently ignored setting.

The default values are defined here, once; every other module that needs one
(mount options, the FUSE operations, the view's caches) takes it from here. The
shipped files of conf/ (pbkfs.toml, which documents these values, and
postgresql.pbkfs.conf) are package data: the source tree's `pbkfs/defaults` is a
link to `conf/`, and the wheel carries them as `pbkfs/defaults/*`, so an installed
pbkfs finds them the same way a checkout does.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from pbkfs.errors import UsageError

SYSTEM_CONFIG = Path("/etc/pbkfs/pbkfs.toml")
# conf/ of the source tree, wherever pbkfs runs from (a checkout or an installed wheel)
# (beside this module: importlib.resources would cost every process ~2 MB of imports)
CONF_DIR = Path(__file__).resolve().parent / "defaults"
REPO_CONF = CONF_DIR  # its earlier name, still imported by tests
DEFAULT_CONFIG_FILE = CONF_DIR / "pbkfs.toml"
POSTGRESQL_CONF_FILE = CONF_DIR / "postgresql.pbkfs.conf"

# Seconds the kernel may cache names (entry) and attributes (attr) of a mount.
CACHE_TIMEOUT = 300.0
# Seconds a worker may leave a request unanswered before it is killed and restarted (its
# requests fail with EIO): a stopped or wedged worker never hangs the mount's users.
REQUEST_TIMEOUT = 120.0
# Per process (the mount process and each worker): page-index memory and open backup files.
PAGE_INDEX_MB = 64
OPEN_FILES = 64

AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
Seconds = Annotated[float, msgspec.Meta(ge=0)]


class MountConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    workers: int = 0  # checked by worker_count (0 = one per CPU)
    owner: str = ""
    entry_timeout: Seconds = CACHE_TIMEOUT
    attr_timeout: Seconds = CACHE_TIMEOUT
    apply_postgresql_conf: bool = True
    timeout: float = 60.0
    request_timeout: Annotated[float, msgspec.Meta(gt=0)] = REQUEST_TIMEOUT


class CacheConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Bounds of a view's caches; carried by the mount options to the mount process and
    each worker, which open their views with them (pbkfs.view.source.open_source)."""

    page_index_mb: AtLeastOne = PAGE_INDEX_MB
    open_files: AtLeastOne = OPEN_FILES

    @property
    def page_index_bytes(self) -> int:
        return self.page_index_mb << 20


DEFAULT_STORE_CACHE_DIR = "/var/cache/pbkfs"
STORE_CACHE_MB = 10240


class StoreConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Object-storage catalogs (`-B s3://BUCKET/PREFIX`): where to reach them and the local
    cache of fetched bytes shared by every mount and command of the host. Credentials come
    the standard AWS way (environment, then the AWS config and credentials files);
    `endpoint` and `region` here override the environment's."""

    endpoint: str = ""
    region: str = ""
    cache_dir: str = DEFAULT_STORE_CACHE_DIR
    cache_size_mb: AtLeastOne = STORE_CACHE_MB
    request_timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0  # seconds per request
    max_retries: Annotated[int, msgspec.Meta(ge=0)] = 8  # throttling, 5xx, timeouts, drops


class LogConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"
    file: str = ""


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    mount: MountConfig = msgspec.field(default_factory=MountConfig)
    cache: CacheConfig = msgspec.field(default_factory=CacheConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)

    def effective_workers(self) -> int:
        return worker_count(self.mount.workers, "mount.workers", zero_means_cpus=True)


def worker_count(n: int, origin: str = "--workers", *, zero_means_cpus: bool = False) -> int:
    """The number of worker processes `n` asks for, or a UsageError naming `origin`.

    The one check of a worker count, wherever it comes from. In the configuration file
    (`zero_means_cpus`) 0 means one worker per CPU; a count given on the command line or
    handed to a mount must be at least 1.
    """
    if n == 0 and zero_means_cpus:
        return os.cpu_count() or 1
    if n < 1:
        need = "0 (one per CPU) or more" if zero_means_cpus else "at least 1"
        raise UsageError(f"{origin} {n}: need {need}")
    return n


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
    worker_count(config.mount.workers, f"config file {path}: mount.workers",
                 zero_means_cpus=True)
    return config


# a line of postgresql.conf: [name [=] value] [# comment]
_SETTING = re.compile(r"""\s*(?:(?P<name>[A-Za-z_][\w.]*)\s*=?\s*
                          (?:'(?P<quoted>(?:[^'\\]|''|\\.)*)'|(?P<plain>[^\s#'=]+)))?
                          \s*(?:\#.*)?""", re.VERBOSE)
_ESCAPE = re.compile(r"''|\\(.)")


def postgresql_settings(path: Path | None = None) -> list[tuple[str, str]]:
    """(name, value) pairs of conf/postgresql.pbkfs.conf (PostgreSQL's syntax), in file
    order; a name given twice keeps its first place and its last value."""
    source = path or POSTGRESQL_CONF_FILE
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{source}: cannot read: {exc}") from exc
    settings: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        m = _SETTING.fullmatch(line)
        if m is None:
            raise UsageError(f"{source}:{lineno}: expected 'name = value', got "
                             f"{line.strip()[:80]!r}")
        if m["name"]:
            quoted = m["quoted"]
            value = m["plain"] if quoted is None else _ESCAPE.sub(
                lambda e: e[1] if e[1] is not None else "'", quoted)
            settings[m["name"].lower()] = value
    return list(settings.items())
