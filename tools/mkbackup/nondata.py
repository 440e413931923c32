"""Copy of non-data files (configs, clog, forks, pg_control, WAL): plain bytes + CRC32C.

In an incremental, a file that existed in the parent with the same size, was
not modified after the parent started and still has the parent's CRC is not
copied (`size -1`); pg_filenode.map is always copied (format spec §4.1).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from pbkfs.catalog.pgcontrol import parse_pg_control
from pbkfs.codecs.crc import crc32c
from pbkfs.fsutil import write_all
from tools.mkbackup.catalogfiles import write_new

COPY_CHUNK = 1 << 20
RELMAPPER_FILENAME = "pg_filenode.map"


@dataclass
class NonDataResult:
    missing: bool = False
    write_size: int = 0  # -1: unchanged since the parent
    crc: int = 0
    full_size: int = 0  # logical size, for size -1 entries


@dataclass(frozen=True)
class PrevFile:
    """What the parent's file list says about the same path."""

    size: int
    full_size: int  # logical size (full_size field, else size)
    crc: int


def file_crc(path: str) -> int:
    crc = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(COPY_CHUNK):
            crc = crc32c(chunk, crc)
    return crc


def copy_file(
    src: str, dst: str, sync: bool = True, advance: Callable[[int], None] | None = None
) -> tuple[int, int]:
    """Copy `src` to `dst`; (bytes, CRC32C). An empty source leaves no `dst` (size 0)."""
    crc = 0
    total = 0
    fd_out: int | None = None
    with open(src, "rb", buffering=0) as f:
        try:
            while chunk := f.read(COPY_CHUNK):
                if fd_out is None:
                    fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                crc = crc32c(chunk, crc)
                write_all(fd_out, chunk)
                total += len(chunk)
                if advance:
                    advance(len(chunk))
            if fd_out is not None and sync:
                os.fsync(fd_out)
        finally:
            if fd_out is not None:
                os.close(fd_out)
    return total, crc


def backup_nondata_file(
    src: str,
    dst: str,
    *,
    name: str,
    size: int,
    mtime: int,
    prev: PrevFile | None,
    parent_start_time: int,
    sync: bool = True,
    advance: Callable[[int], None] | None = None,
) -> NonDataResult:
    """Back up one non-data file, or record it unchanged (-1) against `prev`."""
    try:
        if (
            prev is not None
            and size > 0
            and name != RELMAPPER_FILENAME
            and prev.full_size == size
            and mtime <= parent_start_time
        ):
            crc = file_crc(src)
            if crc == prev.crc:
                if advance:
                    advance(size)
                return NonDataResult(write_size=-1, crc=crc, full_size=prev.full_size)
        written, crc = copy_file(src, dst, sync, advance)
    except FileNotFoundError:
        return NonDataResult(missing=True)
    if written == 0:
        return NonDataResult()
    return NonDataResult(write_size=written, crc=crc, full_size=written)


def backup_pg_control(src: str, dst: str, sync: bool = True) -> NonDataResult:
    """Copy pg_control whole; its `crc` is the CRC stored inside it (format spec §6.1)."""
    with open(src, "rb") as f:
        raw = f.read()
    control = parse_pg_control(raw, src)
    write_new(dst, raw, sync=sync)
    return NonDataResult(write_size=len(raw), crc=control.crc, full_size=len(raw))
