"""The WAL of a --stream backup: every segment from start-lsn to stop-lsn, in database/pg_wal.

Segments are copied from the server's own pg_wal after pg_backup_stop(); a
temporary replication slot taken before pg_backup_start() keeps the server
from recycling them meanwhile, and the stop segment is complete because
pg_backup_stop() (or our pg_switch_wal()) switched past it. Each copy is
checked to really be the expected segment (page address and system id in its
first page header), not a recycled file waiting for reuse.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pbkfs.catalog.lsn import format_lsn, wal_segment_name
from pbkfs.errors import CatalogError
from tools.mkbackup.nondata import copy_file

_LONG_PAGE_HEADER = struct.Struct("<HHIQI4xQII")  # magic, info, tli, pageaddr, rem_len, sysid, ...


@dataclass
class WalFile:
    name: str  # file name inside pg_wal
    size: int
    crc: int
    mode: int


def check_segment(path: Path, segno: int, seg_size: int, system_identifier: int) -> None:
    """CatalogError unless `path` starts with the long page header of segment `segno`."""
    with open(path, "rb") as f:
        head = f.read(_LONG_PAGE_HEADER.size)
    if len(head) < _LONG_PAGE_HEADER.size:
        raise CatalogError(path, "WAL segment too short")
    _magic, _info, _tli, pageaddr, _rem, sysid, xseg, _xblk = _LONG_PAGE_HEADER.unpack(head)
    if pageaddr != segno * seg_size or sysid != system_identifier or xseg != seg_size:
        raise CatalogError(
            path,
            f"not the expected WAL segment (page address {format_lsn(pageaddr)}, expected"
            f" {format_lsn(segno * seg_size)}); the server recycled it before it was copied",
        )


def copy_wal(
    pgdata: Path,
    dest: Path,
    *,
    tli: int,
    start_lsn: int,
    stop_lsn: int,
    seg_size: int,
    system_identifier: int,
    sync: bool = True,
    advance: Callable[[int], None] | None = None,
) -> list[WalFile]:
    """Copy the segments start..stop (and the timeline history file) into `dest`."""
    src_dir = pgdata / "pg_wal"
    out: list[WalFile] = []
    if tli > 1 and (src_dir / f"{tli:08X}.history").exists():
        name = f"{tli:08X}.history"
        size, crc = copy_file(str(src_dir / name), str(dest / name), sync, advance)
        out.append(WalFile(name, size, crc, (src_dir / name).stat().st_mode))
    for segno in range(start_lsn // seg_size, stop_lsn // seg_size + 1):
        name = wal_segment_name(tli, segno * seg_size, seg_size)
        src = src_dir / name
        if not src.exists():
            raise CatalogError(src, "WAL segment needed by the backup is missing from pg_wal")
        check_segment(src, segno, seg_size, system_identifier)
        mode = src.stat().st_mode
        size, crc = copy_file(str(src), str(dest / name), sync, advance)
        if size != seg_size:
            raise CatalogError(src, f"WAL segment is {size} bytes, expected {seg_size}")
        out.append(WalFile(name, size, crc, mode))
    return out
