"""Frames on the worker pipes: whatever way the bytes are cut by the reads, every frame
comes out whole and in order, and a frame encoded in place equals one encoded apart."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pbkfs.ipc import protocol as P

replies = st.one_of(
    st.builds(P.Data, st.integers(0, 2**40), st.binary(max_size=40_000), st.integers(-1, 9)),
    st.builds(P.Done, st.integers(0, 2**40), st.integers(-1, 2**40), st.integers(-1, 9)),
    st.builds(P.Err, st.integers(0, 2**40), st.integers(1, 200), st.text(max_size=50)),
)


@settings(max_examples=200, deadline=None)
@given(msgs=st.lists(replies, max_size=20), cuts=st.lists(st.integers(0, 300_000)))
def test_frames_survive_any_cutting_of_the_stream(msgs: list[P.Reply], cuts: list[int]
                                                  ) -> None:
    stream = bytearray()
    for m in msgs:
        P.encode_into(stream, m)
    assert bytes(stream) == b"".join(P.encode(m) for m in msgs)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    buf = P.FrameBuffer()
    got: list[P.Reply] = []
    for a, b in zip(points, points[1:], strict=False):
        # each chunk is a new bytes object, as os.read returns
        got += [P.reply_decoder.decode(body) for body in buf.feed(bytes(stream[a:b]))]
    assert got == msgs


def test_a_frame_over_the_limit_is_refused() -> None:
    buf = P.FrameBuffer()
    try:
        buf.feed(P.LEN.pack(P.MAX_FRAME + 1) + b"x")
    except ValueError as exc:
        assert "exceeds" in str(exc)
    else:
        raise AssertionError("an oversized frame was accepted")
