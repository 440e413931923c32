"""Page codecs: turn one stored page payload back into exactly one page (layer 1 of 11).

Owns decoding (zlib, pglz, lz4, zstd), CRC32C and page checks; imports only the
root modules. Format spec §3.5:

The payload's codec is the *file entry's* `compress_alg`. A payload of exactly
BLCKSZ bytes is a raw page whatever the codec says (pg_probackup stores pages
raw when compression does not help).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from pbkfs.errors import CodecError, UnsupportedError

Decoder = Callable[[bytes, int], bytes]


def _zlib(payload: bytes, size: int) -> bytes:
    try:
        d = zlib.decompressobj()
        out = d.decompress(payload, size + 1)
        if not d.eof:
            raise CodecError("zlib stream is incomplete")
        if d.unused_data:
            raise CodecError(f"{len(d.unused_data)} bytes after the zlib stream")
    except zlib.error as exc:
        raise CodecError(f"zlib: {exc}") from None
    return out


def _pglz(payload: bytes, size: int) -> bytes:
    from pbkfs.codecs import pglz

    return pglz.decompress(payload, size)


def _lz4(payload: bytes, size: int) -> bytes:
    """Raw LZ4 block (pg_probackup 2.7+; not yet checked against real backups)."""
    import lz4.block

    try:
        return bytes(lz4.block.decompress(payload, uncompressed_size=size))
    except Exception as exc:  # lz4 raises its own LZ4BlockError and ValueError
        raise CodecError(f"lz4: {exc}") from None


def _zstd(payload: bytes, size: int) -> bytes:
    """One zstd frame (pg_probackup 2.8; not yet checked against real backups)."""
    import zstandard

    try:
        return zstandard.ZstdDecompressor().decompress(payload, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise CodecError(f"zstd: {exc}") from None


DECODERS: dict[str, Decoder] = {"zlib": _zlib, "pglz": _pglz, "lz4": _lz4, "zstd": _zstd}
UNVERIFIED = frozenset({"lz4", "zstd"})


def decode_page(alg: str, payload: bytes, block_size: int) -> bytes:
    """The page stored as `payload` with codec `alg`; CodecError if it is not exactly one page."""
    if len(payload) == block_size:
        return payload
    if alg == "none":
        raise CodecError(f"payload of {len(payload)} bytes in an uncompressed file")
    decoder = DECODERS.get(alg)
    if decoder is None:
        raise UnsupportedError(f"unknown page codec {alg!r}")
    page = decoder(payload, block_size)
    if len(page) != block_size:
        raise CodecError(f"{alg} payload decodes to {len(page)} bytes, not {block_size}")
    return page
