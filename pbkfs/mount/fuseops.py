"""The pyfuse3 adapter: kernel requests -> `Vfs` calls, nothing more.

Converts names (bytes <-> str, UTF-8 with surrogateescape: `pbkfs.fsutil`, so
any bytes but '/' and NUL make a name), attributes (Node -> EntryAttributes)
and errors (FsError -> FUSEError). Cache policy lives here because it is
FUSE's: long entry and attribute timeouts (every change goes through this
process, so the kernel's copy never goes stale), `keep_cache` on open (also after
a failed write: docs/CONTRACT.md E5), and the writeback cache.
"""

from __future__ import annotations

import errno
import functools
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from pbkfs.config import CACHE_TIMEOUT
from pbkfs.fs.namespace import FsError, Node
from pbkfs.fs.vfs import Vfs
from pbkfs.fsutil import name_bytes, name_str
from pbkfs.mount.controlsocket import Latency

T = TypeVar("T")
Params = ParamSpec("Params")


def _name(raw: bytes) -> str:
    return name_str(raw)


Handler = Callable[Params, Coroutine[Any, Any, T]]


def _errors(fn: Handler[Params, T]) -> Handler[Params, T]:
    """FsError -> FUSEError; anything else is a bug: log it and answer EIO."""

    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(*args: Params.args, **kwargs: Params.kwargs) -> T:
        self = args[0]
        assert isinstance(self, Operations)
        self.counts[name] = self.counts.get(name, 0) + 1
        t0 = time.perf_counter_ns()
        try:
            return await fn(*args, **kwargs)
        except FsError as exc:
            if exc.errno == errno.ENOSPC:
                self.vfs.note_full()
            raise pyfuse3.FUSEError(exc.errno) from None
        except pyfuse3.FUSEError:
            raise
        except OSError as exc:
            self.vfs.log(f"{fn.__name__}: {exc}")
            if exc.errno == errno.ENOSPC:
                self.vfs.note_full()
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception as exc:  # noqa: BLE001 - the kernel gets EIO, the log the reason
            self.vfs.log(f"{fn.__name__}: internal error {type(exc).__name__}: {exc}")
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            lat = self.latency.get(name)
            if lat is None:
                lat = self.latency[name] = Latency()
            lat.add(time.perf_counter_ns() - t0)

    return wrapper


class Operations(pyfuse3.Operations):
    enable_writeback_cache = True
    supports_dot_lookup = True

    def __init__(
        self,
        vfs: Vfs,
        writeback: bool = True,
        entry_timeout: float = CACHE_TIMEOUT,
        attr_timeout: float = CACHE_TIMEOUT,
    ) -> None:
        super().__init__()
        self.vfs = vfs
        self.entry_timeout = entry_timeout
        self.attr_timeout = attr_timeout
        self.counts: dict[str, int] = {}  # requests per operation (for `pbkfs stat`)
        self.latency: dict[str, Latency] = {}
        self.initialized = trio.Event()
        self.enable_writeback_cache = writeback

    def init(self) -> None:
        """The kernel's INIT request is being answered (called inside the FUSE loop)."""
        self.initialized.set()

    def attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = self.entry_timeout
        a.attr_timeout = self.attr_timeout
        a.st_mode = node.st_mode
        a.st_nlink = node.nlink
        a.st_uid = node.uid
        a.st_gid = node.gid
        a.st_rdev = 0
        size = node.size if node.kind != "d" else 4096
        a.st_size = size
        a.st_blksize = 8192
        a.st_blocks = (size + 511) // 512
        a.st_atime_ns = node.atime_ns
        a.st_mtime_ns = node.mtime_ns
        a.st_ctime_ns = node.ctime_ns
        return a

    # -- names --------------------------------------------------------------------

    @_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        node = self.vfs.lookup_or_none(parent_inode, _name(name))
        if node is None:
            a = pyfuse3.EntryAttributes()
            a.st_ino = 0
            a.entry_timeout = self.entry_timeout
            return a
        return self.attrs(node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        try:
            self.vfs.forget(list(inode_list))
        except Exception as exc:  # noqa: BLE001 - forget must not raise
            self.vfs.log(f"forget: {type(exc).__name__}: {exc}")

    @_errors
    async def getattr(self, inode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self.attrs(self.vfs.getattr(inode))

    @_errors
    async def setattr(
        self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        node = await self.vfs.setattr(
            inode,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        return self.attrs(node)

    @_errors
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return name_bytes(self.vfs.readlink(inode))

    @_errors
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        return self.attrs(self.vfs.mknod(parent_inode, _name(name), mode, ctx.uid, ctx.gid))

    @_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        return self.attrs(self.vfs.mkdir(parent_inode, _name(name), mode, ctx.uid, ctx.gid))

    @_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        node = self.vfs.symlink(parent_inode, _name(name), name_str(target), ctx.uid, ctx.gid)
        return self.attrs(node)

    @_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self.vfs.unlink(parent_inode, _name(name))

    @_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self.vfs.rmdir(parent_inode, _name(name))

    @_errors
    async def rename(
        self, p_old: int, n_old: bytes, p_new: int, n_new: bytes, flags: int, ctx: Any
    ) -> None:
        self.vfs.rename(p_old, _name(n_old), p_new, _name(n_new), flags)

    @_errors
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        return self.attrs(self.vfs.link(inode, new_parent_inode, _name(new_name)))

    # -- files ----------------------------------------------------------------------

    @_errors
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=await self.vfs.open(inode, flags), keep_cache=True)

    @_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        fh, node = self.vfs.create(parent_inode, _name(name), mode, flags, ctx.uid, ctx.gid)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), self.attrs(node)

    @_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.vfs.read(fh, off, size)

    @_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.vfs.write(fh, off, buf)

    @_errors
    async def flush(self, fh: int) -> None:
        await self.vfs.flush(fh)

    @_errors
    async def release(self, fh: int) -> None:
        await self.vfs.release(fh)

    @_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.vfs.fsync(fh, datasync)

    # -- directories ------------------------------------------------------------------

    @_errors
    async def opendir(self, inode: int, ctx: Any) -> int:
        return self.vfs.opendir(inode)

    @_errors
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        entries = self.vfs.readdir(fh)
        for i in range(start_id, len(entries)):
            name, node = entries[i]
            if node.freed:
                continue
            if not pyfuse3.readdir_reply(token, name_bytes(name), self.attrs(node), i + 1):
                return
            node.lookups += 1  # readdirplus: the kernel now holds a reference

    @_errors
    async def releasedir(self, fh: int) -> None:
        self.vfs.releasedir(fh)

    @_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.vfs.fsyncdir(fh, datasync)

    # -- misc ---------------------------------------------------------------------------

    @_errors
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        st = self.vfs.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = st.f_bsize
        out.f_frsize = st.f_frsize
        out.f_blocks = st.f_blocks
        out.f_bfree = st.f_bfree
        out.f_bavail = st.f_bavail
        out.f_files = st.f_files
        out.f_ffree = st.f_ffree
        out.f_favail = st.f_favail
        out.f_namemax = 255
        return out

    @_errors
    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        gids = [ctx.gid]
        try:
            gids += list(pyfuse3.get_sup_groups(ctx.pid))
        except Exception:  # noqa: BLE001 - the process may be gone
            pass
        return self.vfs.access(inode, mode, ctx.uid, gids)
