"""Reading one stored page of one backup, checked before anyone sees it (format spec §6.4)."""

from __future__ import annotations

from pbkfs.catalog.headermap import INLINE_HEADER, PageIndex
from pbkfs.codecs import decode_page
from pbkfs.codecs.pagecheck import check_page
from pbkfs.errors import CodecError, CorruptionError
from pbkfs.view.cache import FdCache
from pbkfs.view.entries import StoredCopy


def read_stored_page(
    copy: StoredCopy,
    index: PageIndex,
    record: int,
    *,
    fds: FdCache,
    block_size: int,
    relseg_size: int,
    checksums_enabled: bool,
) -> bytes:
    """Decode record `record` of `copy`'s page stream and verify it; CorruptionError if bad."""
    entry, backup = copy.entry, copy.backup
    block = index.blocks[record]
    start = index.pos[record]
    length = index.pos[record + 1] - start
    path = backup.stored_path(entry)

    def corrupt(reason: str) -> CorruptionError:
        return CorruptionError(entry.path, reason, block=block, backup_id=backup.id)

    with fds.open(path) as handle:
        if handle.size != entry.size:
            raise corrupt(f"stored file {path} is {handle.size} bytes, listed as {entry.size}")
        raw = handle.pread(length, start)
    if len(raw) != length:
        raise corrupt(f"stored file {path} ends inside the page record at offset {start}")
    head_block, head_size = INLINE_HEADER.unpack_from(raw)
    if head_block != block or head_size != length - INLINE_HEADER.size:
        raise corrupt(f"inline header (block {head_block}, size {head_size}) disagrees with the "
                      f"page header map (block {block}, size {length - INLINE_HEADER.size})")
    alg = entry.compress_alg or backup.control.compress_alg
    try:
        page = decode_page(alg, raw[INLINE_HEADER.size :], block_size)
    except CodecError as exc:
        raise corrupt(f"page does not decode ({alg}): {exc}") from None
    absolute = entry.segno * relseg_size + block
    expected = index.checksum[record] if index.lsn[record] or index.checksum[record] else None
    problem = check_page(page, absolute, checksums_enabled=checksums_enabled,
                         expected_checksum=expected)
    if problem:
        raise corrupt(problem)
    return page
