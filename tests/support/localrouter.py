"""A Router without processes: `workers.handlers.Handlers` over in-process object stores.

Offers what `Vfs` uses of `pbkfs.ipc.router.Router` (submit, rid, worker_of, n):
each request is handled at once, in submit order, by the store of worker
`ino % n`, as one worker process would handle it. Used where every file-system
call on the diff must happen in this process (tests/support/crashmodel.py).
"""

from __future__ import annotations

from collections.abc import Callable

from pbkfs.diff.objects import BaseReader, ObjectStore
from pbkfs.ipc import protocol as P
from workers.handlers import Handlers


class LocalCall:
    """A call that is already complete (what `Router.submit` returns, done)."""

    __slots__ = ("reply",)

    def __init__(self, reply: P.Reply) -> None:
        self.reply = reply

    async def wait(self) -> P.Reply:
        return self.reply


class LocalRouter:
    def __init__(self, n: int, objects_dir: str, base: BaseReader, block_size: int = 8192,
                 log: Callable[[str], None] | None = None) -> None:
        self.n = n
        self.stores = [ObjectStore(objects_dir, base, block_size, log=log) for _ in range(n)]
        self.handlers = [Handlers(s, log) for s in self.stores]
        self._rid = 0

    def rid(self) -> int:
        self._rid += 1
        return self._rid

    def worker_of(self, ino: int) -> int:
        return ino % self.n

    def submit(self, ino: int, req: P.Msg, callback: Callable[[P.Reply], None] | None = None,
               urgent: bool = True) -> LocalCall:
        assert isinstance(req, P.Read | P.Write | P.Truncate | P.Fsync | P.Remove)
        reply = self.handlers[ino % self.n].handle(req)
        if callback is not None:
            callback(reply)
        return LocalCall(reply)

    def close(self) -> None:
        """Close without syncing (the crash explorer never needs the clean path)."""
        for s in self.stores:
            s.close_all()
