"""Where reads of a file never written go: random pages to its own worker, a scan's
readahead spread by chunk over a bounded number of workers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pbkfs.fs.vfs import SPREAD_MIN, read_route


@given(ino=st.integers(1, 1 << 40), off=st.integers(0, 1 << 40),
       length=st.integers(1, SPREAD_MIN - 1))
def test_small_reads_stay_with_the_inode(ino: int, off: int, length: int) -> None:
    assert read_route(ino, off, length) == ino


@given(ino=st.integers(1, 1 << 40), width=st.integers(1, 16), workers=st.integers(1, 16))
def test_readahead_is_spread_over_at_most_width_workers(ino: int, width: int,
                                                        workers: int) -> None:
    chunks = range(64)
    used = {read_route(ino, c << 20, 1 << 20, width) % workers for c in chunks}
    assert len(used) == min(width, workers)
    assert ino % workers in used
    # one chunk always goes to one place
    assert all(read_route(ino, (c << 20) + 4096, SPREAD_MIN, width)
               == read_route(ino, c << 20, 1 << 20, width) for c in chunks)

