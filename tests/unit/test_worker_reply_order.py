"""Contract W1: a worker's replies for one inode leave in the order its requests came.

The worker runs in this process over pipes; only the frontend is missing.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from pbkfs.diff.objects import ObjectStore
from pbkfs.ipc import protocol as P
from tests.support.fakebase import FakeBase, fake_base
from workers.handlers import Handlers
from workers.loop import Worker


class SlowBase(FakeBase):
    """Backup reads that take a millisecond without holding the GIL, like a real decode."""

    def read(self, path: str, offset: int, length: int) -> bytes:
        time.sleep(0.001)
        return super().read(path, offset, length)


def test_fsync_done_never_overtakes_an_earlier_write_error(tmp_path: Path) -> None:
    """A write that fails (answered inline, its reply buffered) and an fsync of the same
    inode that goes to the pool, followed by many inline requests: the write's Err must
    reach the frontend before the fsync's Done, or the fsync would look successful."""
    objects = tmp_path / "objects"
    objects.mkdir()
    store = ObjectStore(str(objects), SlowBase(fake_base().files), 8192)
    rin, win = os.pipe()
    rout, wout = os.pipe()
    worker = Worker(Handlers(store, None), rin, wout, threads=2)
    frames = [
        P.encode(P.Write(10, 5, 7, None, 0, b"kept")),  # object 7 open, with unsynced data
        P.encode(P.Write(1, 5, 7, None, 1 << 62, b"lost")),  # EFBIG: past any file size
        P.encode(P.Fsync(2, 5, 7, True)),  # must wait for the disk: handed to the pool
    ]
    # Then reads of backup data of another file, each letting other threads run.
    frames += [P.encode(P.Read(100 + i, 9, None, "small", 13, 0, 10)) for i in range(300)]

    replies: list[P.Reply] = []

    def collect() -> None:
        buf = P.FrameBuffer()
        while chunk := os.read(rout, 1 << 16):
            replies.extend(P.reply_decoder.decode(b) for b in buf.feed(chunk))

    def feed() -> None:
        data = memoryview(b"".join(frames))
        while data:
            data = data[os.write(win, data):]
        os.close(win)

    reader = threading.Thread(target=collect)
    writer = threading.Thread(target=feed)
    reader.start()
    writer.start()
    assert worker.run() == 0
    writer.join(timeout=60)
    os.close(wout)
    reader.join(timeout=60)
    os.close(rin)
    os.close(rout)
    order = [r.rid for r in replies if r.rid in (1, 2)]
    assert order == [1, 2]
    first = next(r for r in replies if r.rid == 1)
    assert isinstance(first, P.Err)
    assert len(replies) == len(frames)
