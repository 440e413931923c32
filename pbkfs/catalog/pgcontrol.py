"""PostgreSQL's `global/pg_control` (ControlFileData): every field pbkfs and mkbackup read.

Not to be confused with `backup.control` (pbkfs.catalog.control), pg_probackup's
own metadata. Two kinds of reading:

* `parse_pg_control`: the PostgreSQL 15 layout on a 64-bit little-endian
  machine, checked by its CRC; mkbackup reads a live data directory this way
  (as pg_probackup does) so add-instance works without a server and a backup
  can prove the server it talks to runs on the data directory it copies.
* Peeks that hold for every version since 9.x, on a stored or mounted copy:
  the system identifier, the cluster state and checkpoint timeline, and the
  stored CRC a backup listing records as the file's CRC.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from pbkfs.codecs.crc import crc32c
from pbkfs.errors import CatalogError

PG_CONTROL = "global/pg_control"
CRC_OFFSET = 288  # ControlFileData.crc in PostgreSQL 15
STATE_OFFSET = 16  # after system_identifier (8), pg_control_version (4), catalog_version_no (4)
TIMELINE_OFFSET = 48  # checkPointCopy.ThisTimeLineID (checkPoint at 32, checkPointCopy at 40)

# DBState of ControlFileData (the same values since PostgreSQL 9.x)
DB_STATES = {
    0: "starting up", 1: "shut down", 2: "shut down in recovery", 3: "shutting down",
    4: "in crash recovery", 5: "in archive recovery", 6: "in production",
}


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


def read_pg_control(pgdata: Path) -> ControlData:
    """The decoded `<pgdata>/global/pg_control`."""
    path = pgdata / PG_CONTROL
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CatalogError(
            pgdata, f"not a PostgreSQL data directory (no {PG_CONTROL})"
        ) from None
    except OSError as exc:
        raise CatalogError(path, f"cannot read: {exc.strerror}") from None
    return parse_pg_control(raw, path)


def system_identifier(head: bytes) -> int | None:
    """system_identifier from the first 8 bytes (None if fewer)."""
    return struct.unpack_from("<Q", head)[0] if len(head) >= 8 else None


def control_state(raw: bytes) -> tuple[int | None, int | None]:
    """(DBState, checkpoint timeline) from the first bytes; None where unreadable."""
    if len(raw) < TIMELINE_OFFSET + 4:
        return None, None
    (state,) = struct.unpack_from("<i", raw, STATE_OFFSET)
    (tli,) = struct.unpack_from("<I", raw, TIMELINE_OFFSET)
    return (state if state in DB_STATES else None), tli


def stored_crc_is(head: bytes, listed: int) -> bool:
    """Does the CRC stored inside pg_control equal `listed`? (a backup lists that as its crc)

    The CRC is at offset 288 for PostgreSQL 15, but the offset differs between
    versions, so any offset where the stored CRC covers the bytes before it and
    equals the listed value is accepted.
    """
    for off in range(8, min(len(head), 508), 4):
        (stored,) = struct.unpack_from("<I", head, off)
        if stored == listed and crc32c(head[:off]) == stored:
            return True
    return False
