"""The object-store settings of this process, set once at its start.

The CLI sets them from the configuration and its flags; a mount process and its workers
from the options they are started with. Set per process, not passed down every call:
the catalog and view readers open stores deep inside (one per bucket and prefix).
"""

from __future__ import annotations

from pbkfs.config import StoreConfig

_settings = StoreConfig()


def configure(cfg: StoreConfig) -> None:
    """Use `cfg` for every object store this process opens from now on."""
    global _settings
    _settings = cfg


def current() -> StoreConfig:
    return _settings
