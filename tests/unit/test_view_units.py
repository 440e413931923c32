"""The view's caches and codec dispatch, on real catalogs and synthetic payloads."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbkfs.codecs import UNVERIFIED, decode_page
from pbkfs.errors import CodecError
from pbkfs.view import open_view
from pbkfs.view.chainview import ChainView
from pbkfs.view.pages import read_stored_pages


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


def _one_block_at_a_time(view: ChainView, path: str, block: int) -> bytes:
    """The reference: the newest layer holding the block, one record decoded alone."""
    for copy in view._data(path).layers:
        index = view.page_index(copy)
        record = index.find(block)
        if record >= 0:
            return read_stored_pages(copy, index, record, 1, fds=view.fds,
                                     block_size=view.block_size,
                                     relseg_size=view.relseg_size,
                                     checksums_enabled=view.checksums_enabled)[0]
    return bytes(view.block_size)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_runs_of_blocks_read_like_one_block_at_a_time(fixtures_dir: Path,
                                                      data: st.DataObject) -> None:
    """A read decodes runs of consecutive records of one layer in one go; what it returns
    equals each block taken alone from the newest layer holding it, across a chain whose
    DELTA and PAGE layers hold scattered blocks of the same files."""
    view = open_view(fixtures_dir / "pg15" / "catalog", "main",
                     data.draw(st.sampled_from(["TP2KBV", "TP2KC3"])))
    try:
        files = sorted(e.path for e in view.entries()
                       if e.kind == "f" and view.block_count(e.path) > 1)
        path = data.draw(st.sampled_from(files))
        n = view.block_count(path)
        first = data.draw(st.integers(0, n - 1))
        stop = data.draw(st.integers(first + 1, n))
        want = b"".join(_one_block_at_a_time(view, path, b) for b in range(first, stop))
        bs = view.block_size
        assert view.read(path, first * bs, (stop - first) * bs) == want
        skip = data.draw(st.integers(0, bs - 1))  # unaligned too
        assert view.read(path, first * bs + skip, (stop - first) * bs - skip) == want[skip:]
    finally:
        view.close()
