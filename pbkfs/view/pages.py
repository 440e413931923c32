"""Reading stored pages of one backup, each checked before anyone sees it (format spec §6.4).

A run of consecutive records is read with one `pread` and then decoded and checked record
by record: the per-page cost of a cold read is the codec and the checks, not a path, a
descriptor lookup and a system call per 8 KiB.
"""

from __future__ import annotations

from pbkfs.catalog.headermap import INLINE_HEADER, PageIndex
from pbkfs.codecs import decode_page
from pbkfs.codecs.pagecheck import check_page
from pbkfs.errors import CodecError, CorruptionError
from pbkfs.view.cache import FdCache
from pbkfs.view.entries import StoredCopy


def read_stored_pages(
    copy: StoredCopy,
    index: PageIndex,
    first: int,
    count: int,
    *,
    fds: FdCache,
    block_size: int,
    relseg_size: int,
    checksums_enabled: bool,
) -> list[bytes]:
    """Records first..first+count-1 of `copy`'s page stream, decoded and verified (one
    read of the stored bytes); CorruptionError naming the first bad block."""
    entry, backup = copy.entry, copy.backup
    pos = index.pos
    start, stop = pos[first], pos[first + count]
    path = backup.stored_path(entry)

    def corrupt(block: int, reason: str) -> CorruptionError:
        return CorruptionError(entry.path, reason, block=block, backup_id=backup.id)

    with fds.open(path) as handle:
        if handle.size != entry.size:
            raise corrupt(index.blocks[first],
                          f"stored file {path} is {handle.size} bytes, listed as {entry.size}")
        raw = handle.pread(stop - start, start)
    alg = entry.compress_alg or backup.control.compress_alg
    header = INLINE_HEADER.size
    unpack = INLINE_HEADER.unpack_from
    base = entry.segno * relseg_size
    pages: list[bytes] = []
    for record in range(first, first + count):
        block = index.blocks[record]
        lo, hi = pos[record] - start, pos[record + 1] - start
        if hi > len(raw):
            raise corrupt(block, f"stored file {path} ends inside the page record at offset "
                                 f"{pos[record]}")
        head_block, head_size = unpack(raw, lo)
        if head_block != block or head_size != hi - lo - header:
            raise corrupt(block, f"inline header (block {head_block}, size {head_size}) "
                                 f"disagrees with the page header map (block {block}, size "
                                 f"{hi - lo - header})")
        try:
            page = decode_page(alg, raw[lo + header:hi], block_size)
        except CodecError as exc:
            raise corrupt(block, f"page does not decode ({alg}): {exc}") from None
        lsn, checksum = index.lsn[record], index.checksum[record]
        problem = check_page(page, base + block, checksums_enabled=checksums_enabled,
                             expected_checksum=checksum if lsn or checksum else None)
        if problem:
            raise corrupt(block, problem)
        pages.append(page)
    return pages
