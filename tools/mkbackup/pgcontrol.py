"""The few fields of a PostgreSQL 15 `global/pg_control` that a backup needs.

Read straight from the file (as pg_probackup does) so add-instance works
without a server, and so the backup can prove the server it talks to runs on
the PGDATA it copies. Offsets are those of ControlFileData in PostgreSQL 15 on
a 64-bit little-endian machine; the CRC check rejects anything else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from pbkfs.codecs.crc import crc32c
from pbkfs.errors import CatalogError

PG_CONTROL_SIZE = 8192
CRC_OFFSET = 288  # ControlFileData.crc in PostgreSQL 15


@dataclass(frozen=True)
class ControlData:
    system_identifier: int
    pg_control_version: int
    catalog_version: int
    block_size: int
    relseg_size: int
    xlog_block_size: int
    xlog_seg_size: int
    data_checksum_version: int
    crc: int


def parse_pg_control(raw: bytes, where: object = "pg_control") -> ControlData:
    """Decode `raw`; CatalogError when it is not a valid PostgreSQL 15 pg_control."""
    if len(raw) < CRC_OFFSET + 4:
        raise CatalogError(where, f"pg_control is {len(raw)} bytes, too short")
    (stored_crc,) = struct.unpack_from("<I", raw, CRC_OFFSET)
    if crc32c(raw[:CRC_OFFSET]) != stored_crc:
        raise CatalogError(
            where, "pg_control CRC mismatch (not a PostgreSQL 15 cluster, or a torn read)"
        )
    sysid, ctl_version, cat_version = struct.unpack_from("<QII", raw, 0)
    blcksz, relseg, xlog_blcksz, xlog_seg = struct.unpack_from("<IIII", raw, 216)
    (checksum_version,) = struct.unpack_from("<I", raw, 252)
    return ControlData(
        system_identifier=sysid,
        pg_control_version=ctl_version,
        catalog_version=cat_version,
        block_size=blcksz,
        relseg_size=relseg,
        xlog_block_size=xlog_blcksz,
        xlog_seg_size=xlog_seg,
        data_checksum_version=checksum_version,
        crc=stored_crc,
    )


def read_pg_control(pgdata: Path) -> tuple[bytes, ControlData]:
    """Raw bytes and decoded fields of `<pgdata>/global/pg_control`."""
    path = pgdata / "global" / "pg_control"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CatalogError(
            pgdata, "not a PostgreSQL data directory (no global/pg_control)"
        ) from None
    except OSError as exc:
        raise CatalogError(path, f"cannot read: {exc.strerror}") from None
    return raw, parse_pg_control(raw, path)
