"""Just enough of a WAL record reader to know when transactions committed.

Decides targets a server would otherwise reject only after replaying for a
while: a recovery target time after the last transaction in the archive
("recovery ended before configured recovery target was reached"), or before
a backup's consistent point ("requested recovery stop point is before
consistent recovery point"). Reads the page headers and the record headers
of PostgreSQL >= 9.5 WAL (XLogRecord, block headers, main data), checks each
record's CRC, and stops at the first page or record that is not valid, as
PostgreSQL does.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pbkfs.codecs.crc import crc32c
from pbkfs.walarchive.segment import XLOG_PAGE_MAGIC, XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER

RECORD_HEADER = struct.Struct("<IIQBB2xI")  # xl_tot_len, xl_xid, xl_prev, xl_info, xl_rmid, xl_crc
SHORT_PAGE_HEADER = struct.Struct("<HHIQI")  # xlp_magic, xlp_info, xlp_tli, xlp_pageaddr, rem_len
SHORT_HEADER_SIZE = 24
LONG_HEADER_SIZE = 40
CRC_OFFSET = 20

RM_XLOG_ID, RM_XACT_ID = 0, 1
XLOG_SWITCH, XLOG_RESTORE_POINT = 0x40, 0x70
XLOG_XACT_OPMASK = 0x70
XACT_COMMIT, XACT_PREPARE, XACT_ABORT, XACT_COMMIT_PREPARED, XACT_ABORT_PREPARED = \
    0x00, 0x10, 0x20, 0x30, 0x40
XACT_END_OPS = (XACT_COMMIT, XACT_ABORT, XACT_COMMIT_PREPARED, XACT_ABORT_PREPARED)
BLOCK_ID_DATA_SHORT, BLOCK_ID_DATA_LONG, BLOCK_ID_ORIGIN, BLOCK_ID_TOPLEVEL_XID = \
    255, 254, 253, 252
MAX_BLOCK_ID = 32
BKPBLOCK_HAS_IMAGE, BKPBLOCK_SAME_REL = 0x10, 0x80
BKPIMAGE_HAS_HOLE = 0x01
BKPIMAGE_COMPRESSED_OLD = 0x02  # PostgreSQL 9.5 - 14
BKPIMAGE_COMPRESSED_PG15 = 0x04 | 0x08 | 0x10  # pglz, lz4, zstd (PostgreSQL >= 15)
PG15_MAGIC = 0xD110
POSTGRES_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _align(n: int) -> int:
    return (n + 7) & ~7


@dataclass(frozen=True)
class WalRecord:
    lsn: int  # where the record starts
    end: int  # where the next one may start (aligned)
    xid: int
    rmid: int
    info: int
    main_data: bytes


def pg_time(micros: int) -> datetime:
    """A TimestampTz (microseconds since 2000-01-01 UTC)."""
    return POSTGRES_EPOCH + timedelta(microseconds=micros)


def xact_time(rec: WalRecord) -> datetime | None:
    """Commit/abort time of a transaction-end record (what recovery_target_time compares)."""
    if rec.rmid == RM_XACT_ID and rec.info & XLOG_XACT_OPMASK in XACT_END_OPS \
            and len(rec.main_data) >= 8:
        return pg_time(struct.unpack_from("<q", rec.main_data)[0])
    return None


def restore_point(rec: WalRecord) -> tuple[str, datetime] | None:
    """(name, time) of a pg_create_restore_point() record."""
    if rec.rmid == RM_XLOG_ID and rec.info & 0xF0 == XLOG_RESTORE_POINT \
            and len(rec.main_data) >= 8 + 64:
        name = rec.main_data[8:72].split(b"\0", 1)[0].decode("utf-8", "replace")
        return name, pg_time(struct.unpack_from("<q", rec.main_data)[0])
    return None


class _Stream:
    """The record bytes of consecutive segments, page headers removed, with LSN mapping."""

    def __init__(self, seg_size: int, blcksz: int) -> None:
        self.seg_size = seg_size
        self.blcksz = blcksz
        self.chunks: list[tuple[int, int, bytes]] = []  # (payload offset, lsn, bytes)
        self.data = bytearray()
        self.first_rem = 0
        self.magic = 0
        self.expected_next: int | None = None

    def add_segment(self, segno: int, seg: bytes) -> bool:
        """Append a segment's valid pages (up to the first invalid one, e.g. the zeros after a
        WAL switch); False when it does not follow the previous segment."""
        start = segno * self.seg_size
        if self.expected_next is not None and start != self.expected_next:
            return False
        self.expected_next = start + self.seg_size
        for off in range(0, len(seg) - self.blcksz + 1, self.blcksz):
            magic, info, _tli, addr, rem = SHORT_PAGE_HEADER.unpack_from(seg, off)
            if magic not in XLOG_PAGE_MAGIC.values() or addr != start + off:
                break
            hdr = LONG_HEADER_SIZE if info & XLP_LONG_HEADER else SHORT_HEADER_SIZE
            if not self.chunks:
                self.first_rem = rem if info & XLP_FIRST_IS_CONTRECORD else 0
                self.magic = magic
            page = seg[off + hdr:off + self.blcksz]
            self.chunks.append((len(self.data), start + off + hdr, page))
            self.data += page
        return True

    def lsn_of(self, pos: int) -> int:
        lo, hi = 0, len(self.chunks) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.chunks[mid][0] <= pos:
                lo = mid
            else:
                hi = mid - 1
        base, lsn, _ = self.chunks[lo]
        return lsn + (pos - base)


def _main_data_length(rec: bytes, compressed_mask: int) -> int | None:
    """Length of the record's main data, from its block headers (None when malformed).

    The headers end where only the data they announce is left (PostgreSQL's
    DecodeXLogRecord loop: `while (remaining > datatotal)`).
    """
    pos = RECORD_HEADER.size
    tot = len(rec)
    datatotal = 0
    while tot - pos > datatotal:
        block_id = rec[pos]
        pos += 1
        if block_id == BLOCK_ID_DATA_SHORT:
            return rec[pos] if pos < tot else None
        if block_id == BLOCK_ID_DATA_LONG:
            return struct.unpack_from("<I", rec, pos)[0] if pos + 4 <= tot else None
        if block_id == BLOCK_ID_ORIGIN:
            pos += 2
        elif block_id == BLOCK_ID_TOPLEVEL_XID:
            pos += 4
        elif block_id <= MAX_BLOCK_ID:
            if pos + 3 > tot:
                return None
            fork_flags = rec[pos]
            datatotal += struct.unpack_from("<H", rec, pos + 1)[0]
            pos += 3
            if fork_flags & BKPBLOCK_HAS_IMAGE:
                if pos + 5 > tot:
                    return None
                bimg_len, _hole_offset, bimg_info = struct.unpack_from("<HHB", rec, pos)
                datatotal += bimg_len
                pos += 5
                if bimg_info & BKPIMAGE_HAS_HOLE and bimg_info & compressed_mask:
                    pos += 2  # hole_length
            if not fork_flags & BKPBLOCK_SAME_REL:
                pos += 12  # RelFileNode
            pos += 4  # BlockNumber
        else:
            return None
    return 0 if tot - pos == datatotal else None


def iter_records(segments: Iterable[tuple[int, bytes]], seg_size: int,
                 blcksz: int = 8192) -> Iterator[WalRecord]:
    """Records starting in the given consecutive (segno, content) segments, in order.

    Records continued from before the first segment are skipped; a record
    running past the last segment given, or the first invalid one, ends it.
    """
    stream = _Stream(seg_size, blcksz)
    for segno, seg in segments:
        if not stream.add_segment(segno, seg):
            break
    data = stream.data
    mask = BKPIMAGE_COMPRESSED_PG15 if stream.magic >= PG15_MAGIC else BKPIMAGE_COMPRESSED_OLD
    pos = _align(stream.first_rem)
    while pos + RECORD_HEADER.size <= len(data):
        tot_len, xid, _prev, info, rmid, crc = RECORD_HEADER.unpack_from(data, pos)
        if tot_len < RECORD_HEADER.size or pos + tot_len > len(data):
            return
        rec = bytes(data[pos:pos + tot_len])
        if crc32c(rec[:CRC_OFFSET], crc32c(rec[RECORD_HEADER.size:])) != crc:
            return
        main_len = _main_data_length(rec, mask)
        if main_len is None or main_len > tot_len:
            return
        lsn = stream.lsn_of(pos)
        yield WalRecord(lsn, 0, xid, rmid, info, rec[tot_len - main_len:])
        if rmid == RM_XLOG_ID and info & 0xF0 == XLOG_SWITCH:
            # the rest of this segment is padding: continue with the next one
            seg_end = (lsn // seg_size + 1) * seg_size
            nxt = next((c for c in stream.chunks if c[1] - LONG_HEADER_SIZE == seg_end), None)
            if nxt is None:
                return
            pos = nxt[0]
            continue
        pos = _align(pos + tot_len)
