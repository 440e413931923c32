"""Request handlers of a worker: one protocol request against the object store."""

from __future__ import annotations

import errno

from pbkfs.diff.objects import ObjectStore, errno_of
from pbkfs.errors import PbkfsError
from pbkfs.ipc import protocol as P


class Handlers:
    """Turns requests into object-store calls and replies (never raises)."""

    def __init__(self, store: ObjectStore, log: object) -> None:
        self.store = store
        self.log = log

    def _log(self, msg: str) -> None:
        if callable(self.log):
            self.log(msg)

    def handle(self, req: P.Request) -> P.Reply:
        try:
            return self._dispatch(req)
        except PbkfsError as exc:
            self._log(f"{type(req).__name__.lower()} ino {getattr(req, 'ino', '?')}: {exc}")
            return P.Err(req.rid, errno.EIO, str(exc))
        except Exception as exc:
            err = errno_of(exc)
            if err == errno.EIO or not isinstance(exc, OSError):
                self._log(f"{type(req).__name__.lower()} ino {getattr(req, 'ino', '?')}: "
                          f"{type(exc).__name__}: {exc}")
            return P.Err(req.rid, err, str(exc))

    def _dispatch(self, req: P.Request) -> P.Reply:
        s = self.store
        if isinstance(req, P.Read):
            if req.fid is None:
                if req.origin is None:
                    return P.Data(req.rid, b"")
                return P.Data(req.rid, s.read_base(req.origin, req.size, req.off, req.length))
            data = s.read(req.fid, req.origin, req.off, req.length)
            return P.Data(req.rid, data, s.slot_of(req.fid))
        if isinstance(req, P.Write):
            obj = s.write(req.fid, req.origin, req.off, req.data)
            return P.Done(req.rid, obj.size, obj.slot)
        if isinstance(req, P.Truncate):
            obj = s.truncate(req.fid, req.origin, req.size)
            return P.Done(req.rid, obj.size, obj.slot)
        if isinstance(req, P.Fsync):
            obj2 = s.fsync(req.fid, req.datasync)
            return P.Done(req.rid, obj2.size if obj2 else -1, obj2.slot if obj2 else -1)
        if isinstance(req, P.Remove):
            s.remove(req.fid)
            return P.Done(req.rid)
        raise ValueError(f"unexpected request {type(req).__name__}")
