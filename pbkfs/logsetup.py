"""Logging for pbkfs processes: text or JSON lines, to stderr or a file.

A foreground mount logs to stderr, a background one to a file (the diff
directory's pbkfs.log unless configured). JSON lines carry the same fields as
the text, so people can grep either.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import sys
import time
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s"


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record: time, level, process, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "process": record.processName,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


LOG_RESERVE = 256 * 1024
FALLOC_FL_KEEP_SIZE = 1
_libc: ctypes.CDLL | None = None  # loaded at first use (not ctypes.util: it runs ldconfig)


def reserve_after_end(fd: int, end: int, nbytes: int) -> None:
    """Allocate `nbytes` from `end` (the file's end) without changing its size.

    Appends into that space need no new blocks, so a log line still gets written
    when the file system is full (the full diff directory is the news to log).
    Best effort: a file system without fallocate just gets no reserve.
    """
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL("libc.so.6", use_errno=True)
    _libc.fallocate(fd, FALLOC_FL_KEEP_SIZE, ctypes.c_long(end), ctypes.c_long(nbytes))


class ReservedFileHandler(logging.FileHandler):
    """A log file that keeps room for its next lines reserved on disk.

    Every process of a mount appends to the same file; each tops the reserve up
    when the file's end (whoever wrote it) comes within half of it.
    """

    def __init__(self, filename: str) -> None:
        super().__init__(filename, errors="backslashreplace")
        self._reserved_to = 0
        self._top_up()

    def _top_up(self) -> None:
        if self.stream is not None:
            fd = self.stream.fileno()
            end = os.fstat(fd).st_size
            if end > self._reserved_to - LOG_RESERVE // 2:
                reserve_after_end(fd, end, LOG_RESERVE)
                self._reserved_to = end + LOG_RESERVE

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        try:
            self._top_up()
        except OSError:
            pass  # the line is written; the reserve is a nicety


def setup_logging(fmt: str = "text", level: str = "info", file: str | None = None) -> None:
    """Configure the root logger once for this process."""
    handler: logging.Handler
    if file:
        os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
        # a name that is not UTF-8 (lone surrogates) is logged as \xNN, not lost
        handler = ReservedFileHandler(file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
