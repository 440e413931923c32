"""The FUSE-free core with real worker processes: a Vfs over a plain base directory.

`run_vfs` builds what a mount builds (diff directory, namespace from snapshot +
journal, settled objects, shared memory, a Router with real `python -m workers`
processes) and runs an async body against the Vfs; only the kernel is missing.
Running it again on the same `tmp_path` is a remount of the same diff.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from pbkfs.diff.directory import DiffDir
from pbkfs.diff.journal import JournalDir
from pbkfs.diff.sharedmaps import Segment
from pbkfs.fs.namespace import Namespace
from pbkfs.fs.vfs import Vfs
from pbkfs.ipc.router import Router
from pbkfs.view.source import SourceSpec, open_source

BS = 8192


def make_base(root: Path) -> dict[str, bytes]:
    files = {
        "base/1/100": random.Random(1).randbytes(4 * BS),
        "base/1/200": random.Random(2).randbytes(BS + 77),
        "PG_VERSION": b"15\n",
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


Body = Callable[[Vfs, Router], Awaitable[None]]


def run_vfs(tmp_path: Path, body: Body, workers: int = 2) -> None:
    base = tmp_path / "base"
    if not base.exists():
        make_base(base)
    spec = SourceSpec("plain", path=str(base))
    source = open_source(spec)
    diff = DiffDir(str(tmp_path / "diff"))
    diff.create()
    jd = JournalDir(diff.ns)
    snap, records = jd.load()
    ns = Namespace(0, 0, 0, journal=jd.append)
    if snap:
        ns.load_snapshot(snap)
    else:
        ns.load_entries(source.entries())
    ns.replay(records)
    from pbkfs.fs.settle import settle_objects

    settle_objects(ns, diff, source)
    name = f"/pbkfs-test-{uuid.uuid4().hex[:8]}"
    seg = Segment.create(name, workers, BS)
    router = Router(workers, spec, diff.objects, name)
    vfs = Vfs(ns, router, diff.objects, jd, seg, diff.path)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await router.start(nursery)
            try:
                await body(vfs, router)
            finally:
                with trio.CancelScope(shield=True):
                    await router.shutdown()
                nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        vfs.close_fds()
        jd.close()
        seg.close()
        seg.unlink()


def lookup_path(vfs: Vfs, path: str) -> int:
    ino = 1
    for part in path.split("/"):
        ino = vfs.lookup(ino, part).ino
    return ino
