"""Writing a fetched WAL file where PostgreSQL asked for it, atomically.

restore_command's `%p` is relative to the server's working directory (its
data directory), so relative paths are used as given. The bytes go to a
temporary file next to the destination, are fsynced, and renamed over it;
the directory is fsynced too. A crash leaves either no file or the whole one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pbkfs.errors import PbkfsError
from pbkfs.fsutil import fsync_dir


def write_atomically(dest: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> Path:
    """Write `data` to `dest` via tmp + fsync + rename; returns the destination path."""
    target = Path(dest)
    parent = target.parent
    tmp = parent / f".{target.name}.pbkfs-{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise PbkfsError(f"{target}: cannot create {tmp.name} in {parent}: {exc.strerror}") \
            from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise PbkfsError(f"{target}: cannot write: {exc.strerror}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        fsync_dir(parent)
    return target
