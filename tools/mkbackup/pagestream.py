"""Back up one relation segment as a pg_probackup page stream (format spec §3, §4.1).

Each stored page becomes `{uint32 block, int32 compressed_size}` + payload; the
payload is the compressed page, or the raw 8192 bytes when compression is off
or does not shrink it. A BackupPageHeader2 per stored page (LSN, block, offset
of the record, checksum) goes to page_header_map, with a sentinel giving the
stream length. DELTA skips pages whose LSN is non-zero and below the parent's
start LSN.

Pages are read while the server writes them, so a page can be caught half
written; such a page fails the header/checksum test and is re-read until it
is whole (as pg_probackup does), and only a page that stays broken is an error.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from pbkfs.codecs.crc import crc32c
from pbkfs.errors import CorruptionError
from pbkfs.fsutil import pread_exact, write_all
from tools.mkbackup.pages import PageState, inspect_page, make_compressor

RECORD_HEADER = struct.Struct("<Ii")  # BackupPageHeader: block, compressed_size
MAP_HEADER = struct.Struct("<QiiH6x")  # BackupPageHeader2: lsn, block, pos, checksum, padding
READ_CHUNK_PAGES = 128
WRITE_CHUNK = 1 << 20
READ_ATTEMPTS = 300


@dataclass
class DataFileResult:
    """What the file list needs to know about one backed-up datafile."""

    missing: bool = False  # vanished before it could be read: not listed at all
    write_size: int = 0
    uncompressed_size: int = 0
    n_blocks: int = 0
    n_headers: int = 0
    crc: int = 0
    compress_alg: str = "none"
    headers: bytes = b""  # (n_headers + 1) BackupPageHeader2, raw


@dataclass(frozen=True)
class StreamParams:
    blcksz: int
    relseg_size: int
    verify_checksums: bool
    compress_alg: str
    compress_level: int


class _Writer:
    """Buffered output that creates the file only when the first record arrives."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        self.buf: list[bytes] = []
        self.buffered = 0
        self.pos = 0
        self.crc = 0

    def add(self, *pieces: bytes) -> None:
        for p in pieces:
            self.buf.append(p)
            self.buffered += len(p)
            self.pos += len(p)
        if self.buffered >= WRITE_CHUNK:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        data = b"".join(self.buf)
        self.buf.clear()
        self.buffered = 0
        self.crc = crc32c(data, self.crc)
        if self.fd is None:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        write_all(self.fd, data)

    def close(self, sync: bool) -> None:
        self.flush()
        if self.fd is not None:
            if sync:
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None


def backup_datafile(
    src: str,
    dst: str,
    *,
    segno: int,
    listed_size: int,
    params: StreamParams,
    delta_lsn: int | None,
    sync: bool = True,
    advance: Callable[[int], None] | None = None,
) -> DataFileResult:
    """Write the page stream of `src` to `dst` (nothing when no page is stored).

    `delta_lsn`: the parent's start LSN when the file existed in the parent of
    a DELTA backup (pages with 0 < LSN < it are skipped), else None.
    """
    blcksz = params.blcksz
    zero_page = bytes(blcksz)
    compress = make_compressor(params.compress_alg, params.compress_level)
    try:
        fd = os.open(src, os.O_RDONLY)
    except FileNotFoundError:
        return DataFileResult(missing=True)
    out = _Writer(dst)
    headers: list[bytes] = []
    nblocks = listed_size // blcksz
    blkno = 0
    base = segno * params.relseg_size
    try:
        while blkno < nblocks:
            want = min(READ_CHUNK_PAGES, nblocks - blkno)
            chunk = pread_exact(fd, want * blcksz, blkno * blcksz)
            got = len(chunk) // blcksz
            for i in range(got):
                page = chunk[i * blcksz:(i + 1) * blcksz]
                state, lsn, checksum = inspect_page(
                    page, base + blkno, blcksz, zero_page, params.verify_checksums
                )
                if state in (PageState.BAD_HEADER, PageState.BAD_CHECKSUM):
                    page, state, lsn, checksum = _reread(fd, src, blkno, base, params, zero_page)
                    if not page:  # truncated under us
                        got = i
                        break
                if delta_lsn is not None and 0 < lsn < delta_lsn:
                    blkno += 1
                    continue
                payload = compress(page) if compress else None
                if payload is None or len(payload) >= blcksz:
                    payload = page
                headers.append(MAP_HEADER.pack(lsn, blkno, out.pos, checksum))
                out.add(RECORD_HEADER.pack(blkno, len(payload)), payload)
                blkno += 1
            if advance:
                advance(got * blcksz)
            if got < want:
                break  # the relation was truncated while we read it
            del chunk
        n_blocks = blkno
        out.close(sync)
    finally:
        os.close(fd)
        if out.fd is not None:
            os.close(out.fd)
    if not headers:
        return DataFileResult(n_blocks=n_blocks)
    headers.append(MAP_HEADER.pack(0, 0, out.pos, 0))
    return DataFileResult(
        write_size=out.pos,
        uncompressed_size=(len(headers) - 1) * blcksz,
        n_blocks=n_blocks,
        n_headers=len(headers) - 1,
        crc=out.crc,
        compress_alg=params.compress_alg,
        headers=b"".join(headers),
    )


def _reread(
    fd: int, src: str, blkno: int, base: int, params: StreamParams, zero_page: bytes
) -> tuple[bytes, PageState, int, int]:
    """Read block `blkno` again until it is whole; b'' if the file no longer has it."""
    blcksz = params.blcksz
    state, lsn, checksum = PageState.BAD_HEADER, 0, 0
    for attempt in range(READ_ATTEMPTS):
        if attempt:
            time.sleep(0.002)
        page = pread_exact(fd, blcksz, blkno * blcksz)
        if len(page) < blcksz:
            return b"", state, 0, 0
        state, lsn, checksum = inspect_page(
            page, base + blkno, blcksz, zero_page, params.verify_checksums
        )
        if state in (PageState.VALID, PageState.ZERO):
            return page, state, lsn, checksum
    raise CorruptionError(
        src, f"page verification failed after {READ_ATTEMPTS} reads: {state.value}", block=blkno
    )
