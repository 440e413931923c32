"""The mount's log keeps room reserved: a full diff directory is still logged."""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbkfs.logsetup import LOG_RESERVE, ReservedFileHandler
from tests.support.mounting import small_tmpfs


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "tiny", "2m") as d:
        yield d


def fill(path: Path) -> None:
    """Write until the file system refuses."""
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                f.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return


def test_lines_are_written_after_the_file_system_filled_up(tiny_fs: Path) -> None:
    log_path = tiny_fs / "pbkfs.log"
    handler = ReservedFileHandler(str(log_path))
    logger = logging.Logger("reserve-test")
    logger.addHandler(handler)
    try:
        logger.error("before")
        fill(tiny_fs / "filler")
        lines = [f"line {i} " + "x" * 200 for i in range(LOG_RESERVE // 2 // 220)]
        for line in lines:
            logger.error(line)
        handler.flush()
    finally:
        handler.close()
    assert log_path.read_text().splitlines() == ["before", *lines]


def test_without_the_reserve_the_line_is_lost(tiny_fs: Path) -> None:
    """The control: a plain FileHandler on the same full file system loses the line."""
    log_path = tiny_fs / "plain.log"
    handler = logging.FileHandler(str(log_path))
    logger = logging.Logger("plain-test")
    logger.addHandler(handler)
    logging.raiseExceptions = False
    try:
        logger.error("before")
        fill(tiny_fs / "filler")
        for i in range(2000):
            logger.error(f"line {i} " + "x" * 200)
    finally:
        logging.raiseExceptions = True
        with contextlib.suppress(OSError):
            handler.close()
    assert len(log_path.read_text().splitlines()) < 2001
