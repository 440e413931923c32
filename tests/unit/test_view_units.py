"""The view's caches and codec dispatch, on real catalogs and synthetic payloads."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from pbkfs.codecs import UNVERIFIED, decode_page
from pbkfs.errors import CodecError
from pbkfs.view import open_view


def test_index_cache_stays_bounded(fixtures_dir: Path) -> None:
    """Memory stays flat however much is read: page indexes are evicted by weight."""
    capacity = 4096
    view = open_view(fixtures_dir / "pg15" / "catalog", "main", "TP2KC3",
                     index_cache_bytes=capacity)
    datafiles = [e for e in view.entries() if e.is_datafile and e.size > 0]
    assert len(datafiles) > 100
    peak = 0
    for e in datafiles:
        view.read(e.path, 0, e.size)
        peak = max(peak, view.indexes.total_weight)
        assert len(view.indexes) <= max(1, capacity // 64)
    assert view.indexes.misses > len(view.indexes)
    largest_single = max(view.page_index(c).weight for e in datafiles
                         for c in view._data(e.path).layers)
    assert peak <= capacity + largest_single


def test_fd_cache_bounded(fixtures_dir: Path) -> None:
    view = open_view(fixtures_dir / "pg15" / "catalog", "main", "TP2KB6", open_files=3)
    for e in list(view.entries())[:200]:
        if e.kind == "f":
            view.read(e.path, 0, 100)
    assert len(view.fds._open) <= 3


def test_block_sources_follow_the_chain(fixtures_dir: Path) -> None:
    view = open_view(fixtures_dir / "pg15-bigrel" / "catalog", "big", "TP2ML7")
    sources = view.block_sources("base/5/16384")
    assert len(sources) == 131072
    changed = {i for i, s in enumerate(sources) if s == "TP2ML7"}
    assert changed == {0, 1, 99999, 131071}  # fixture README: pages the DELTA stored
    assert all(s == "TP2MKF" for i, s in enumerate(sources) if i not in changed)
    # the shrunk relation: the target's n_blocks wins over the FULL's longer copy
    shrunk, tail = view.entry("base/5/16389"), view.entry("base/5/16389.1")
    assert shrunk is not None and shrunk.size == 130048 * 8192
    assert tail is not None and tail.size == 0


def test_lz4_and_zstd_pages_decode() -> None:
    """Codecs of newer pg_probackup (not yet checked against real backups): raw LZ4 block,
    one zstd frame."""
    import lz4.block
    import zstandard

    page = (b"pbkfs" * 2000)[:8192]
    assert decode_page("lz4", lz4.block.compress(page, store_size=False), 8192) == page
    assert decode_page("zstd", zstandard.ZstdCompressor().compress(page), 8192) == page
    assert decode_page("zlib", zlib.compress(page), 8192) == page
    assert UNVERIFIED == {"lz4", "zstd"}
    with pytest.raises(CodecError):
        decode_page("zlib", zlib.compress(page[:100]), 8192)
    with pytest.raises(CodecError):
        decode_page("none", page[:100], 8192)
