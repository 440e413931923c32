"""Logging for pbkfs processes: text or JSON lines, to stderr or a file.

A foreground mount logs to stderr, a background one to a file (the diff
directory's pbkfs.log unless configured). JSON lines carry the same fields as
the text, so people can grep either.
"""

from __future__ import annotations

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


def setup_logging(fmt: str = "text", level: str = "info", file: str | None = None) -> None:
    """Configure the root logger once for this process."""
    handler: logging.Handler
    if file:
        os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
        # a name that is not UTF-8 (lone surrogates) is logged as \xNN, not lost
        handler = logging.FileHandler(file, errors="backslashreplace")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
