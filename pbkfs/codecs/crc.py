"""CRC32C (Castagnoli), the checksum of every pg_probackup metadata and file CRC.

Taken from the `crc32c` C library: a pure-Python CRC runs at about 8 MB/s.

Only its compiled module is loaded: the package's `__init__` imports
importlib.metadata (and with it the email package) and argparse for a version
string and a command line, 4.4 MB of heap in every pbkfs process (two or more
per mount). Should the package's layout change, the plain import is used.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import zlib
from types import ModuleType
from typing import Any


def _load_compiled() -> Any:
    spec = importlib.util.find_spec("crc32c")
    locations = spec.submodule_search_locations if spec is not None else None
    for folder in locations or []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "_crc32c" + suffix)
            if os.path.exists(path):
                ext = importlib.util.spec_from_file_location("crc32c._crc32c", path)
                if ext is not None and ext.loader is not None:
                    module: ModuleType = importlib.util.module_from_spec(ext)
                    ext.loader.exec_module(module)
                    return module
    import crc32c as whole  # pragma: no cover - another layout of the package

    return whole


_crc32c = _load_compiled()


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC32C of `data`, continuing from `value` (0 to start)."""
    return int(_crc32c.crc32c(data, value))


def crc32(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """zlib/IEEE CRC-32, used by pg_probackup 2.0.22-2.0.24 for file CRCs."""
    return zlib.crc32(data, value)
