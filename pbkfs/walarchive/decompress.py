"""Decompressing archived WAL files, bounded so a damaged file cannot exhaust memory.

gzip is what pg_probackup 2.5 writes (`--compress-algorithm=zlib` gives a
gzip member, checked against real archives). LZ4 frame (`.lz4`) and zstd
frame (`.zst`) come from later releases and were NOT checked against real
archives.
"""

from __future__ import annotations

import zlib

from pbkfs.errors import CorruptionError

ZSTD_STEP = 1024


def decompress(data: bytes, compression: str, limit: int, path: object) -> bytes:
    """The content of a stored WAL file; CorruptionError when it does not decode.

    `limit` is the largest acceptable content (the segment size): anything
    larger is reported as damage instead of being decoded to the end.
    """
    if compression == "none":
        if len(data) > limit:
            raise CorruptionError(path, f"file is {len(data)} bytes, more than {limit}")
        return data
    if compression == "gzip":
        return _gunzip(data, limit, path)
    if compression == "lz4":
        return _unlz4(data, limit, path)
    if compression == "zstd":
        return _unzstd(data, limit, path)
    raise CorruptionError(path, f"unknown compression {compression!r}")


def _gunzip(data: bytes, limit: int, path: object) -> bytes:
    out = bytearray()
    rest = data
    if not rest:
        raise CorruptionError(path, "empty gzip file")
    while rest:
        d = zlib.decompressobj(wbits=31)
        try:
            out += d.decompress(rest, limit + 1 - len(out))
        except zlib.error as exc:
            raise CorruptionError(path, f"not a valid gzip stream: {exc}") from None
        if len(out) > limit:
            raise CorruptionError(path, f"decompresses to more than {limit} bytes")
        if not d.eof:
            raise CorruptionError(path, "gzip stream is truncated")
        rest = d.unused_data  # a further gzip member, as gzip(1) accepts
    return bytes(out)


def _unlz4(data: bytes, limit: int, path: object) -> bytes:
    import lz4.frame

    d = lz4.frame.LZ4FrameDecompressor()
    try:
        out = d.decompress(data, max_length=limit + 1)
    except RuntimeError as exc:
        raise CorruptionError(path, f"not a valid LZ4 frame: {exc}") from None
    if len(out) > limit:
        raise CorruptionError(path, f"decompresses to more than {limit} bytes")
    if not d.eof:
        raise CorruptionError(path, "LZ4 frame is truncated")
    if d.unused_data:
        raise CorruptionError(path, f"{len(d.unused_data)} bytes after the LZ4 frame")
    return bytes(out)


def _unzstd(data: bytes, limit: int, path: object) -> bytes:
    import zstandard

    out = bytearray()
    d = zstandard.ZstdDecompressor().decompressobj()
    try:
        # Small input chunks bound the output of one step (zstd expands at most ~32000x).
        for pos in range(0, len(data), ZSTD_STEP):
            out += d.decompress(data[pos:pos + ZSTD_STEP])
            if len(out) > limit:
                raise CorruptionError(path, f"decompresses to more than {limit} bytes")
            if d.eof:
                break
    except zstandard.ZstdError as exc:
        raise CorruptionError(path, f"not a valid zstd frame: {exc}") from None
    if not d.eof:
        raise CorruptionError(path, "zstd frame is truncated")
    return bytes(out)
