"""Entry point: `python -m workers SPEC_JSON` (started by the frontend, never by hand).

SPEC_JSON is a `pbkfs.ipc.protocol.WorkerSpec` in JSON. The worker opens its own view
of the source, attaches its region of the mount's shared-memory segment,
says Ready on stdout and serves requests until told to shut down.
"""

from __future__ import annotations

import os
import signal
import sys

import msgspec

from pbkfs.diff.objects import ObjectStore
from pbkfs.diff.sharedmaps import Region, Segment
from pbkfs.fdlimit import open_objects_bound, raise_soft_limit
from pbkfs.ipc import protocol as P
from pbkfs.ipc.protocol import WorkerSpec
from pbkfs.logsetup import setup_logging
from pbkfs.memtrim import start_trimmer
from pbkfs.storage.settings import configure
from pbkfs.storage.stats import start_publisher, stats_dir
from pbkfs.view.source import open_source
from workers.handlers import Handlers
from workers.loop import Worker, log_line


def main(argv: list[str]) -> int:
    spec = msgspec.json.decode(argv[1].encode(), type=WorkerSpec)
    setup_logging(spec.log_format, spec.log_level)  # stderr is the mount's log
    configure(spec.store)  # s3:// catalogs: endpoint, cache (pbkfs.storage.settings)
    # The frontend decides when we stop (Shutdown or closed pipe); Ctrl-C in a
    # foreground mount must not kill workers before they have synced.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def log(msg: str) -> None:
        log_line(spec.index, msg)

    try:
        source = open_source(spec.source, spec.caches)
    except Exception as exc:
        log(f"cannot open the source: {exc}")
        return 2
    if spec.layers:  # a branch: reads fall through the diffs under it
        from pbkfs.diff.layers import Layers

        source.layers = Layers(spec.layers, source.block_size)
    region = None
    inherited: dict[int, bytes] = {}
    if spec.shm:
        seg = Segment.attach(spec.shm, writable=True)
        region = Region(seg, spec.index)
        # What an earlier process of this worker published: the blocks it wrote, synced or
        # not. Adopted by the objects when they are opened again; the region starts afresh.
        inherited = region.inherited()
        region.reset()
    store = ObjectStore(spec.objects, source, source.block_size, region,
                        max_open=open_objects_bound(raise_soft_limit()), log=log,
                        inherited=inherited)
    worker = Worker(Handlers(store, log), threads=spec.threads, index=spec.index)
    worker.send(P.Ready(0, os.getpid(), spec.index))
    start_trimmer(lambda: worker.requests)
    if spec.source.store.startswith("s3://") and spec.shm:
        start_publisher(stats_dir(spec.shm))  # object-store figures for `pbkfs stat`
    return worker.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
