"""What the control socket of a live mount reports (see pbkfs.mount.controlsocket)."""

from __future__ import annotations

import os
import time
from typing import Any

from pbkfs.fs.vfs import Vfs
from pbkfs.ipc.router import Router
from pbkfs.mount.fuseops import Operations


class MountStats:
    """What the control socket reports: requests, latencies, workers, the diff."""

    def __init__(self, ops: Operations, vfs: Vfs, router: Router, diff: str) -> None:
        self.ops = ops
        self.vfs = vfs
        self.router = router
        self.diff = diff
        self.started = time.time()
        self.since = time.time()

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("cmd", "stat") != "stat":
            return {"error": f"unknown command {request.get('cmd')!r}"}
        st = self.vfs.stats
        out: dict[str, Any] = {
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 1),
            "counters_since_s": round(time.time() - self.since, 1),
            "operations": {k: v.summary() for k, v in sorted(self.ops.latency.items())},
            "reads": {"frontend": st.reads_hot, "worker": st.reads_worker,
                      "bytes": st.bytes_read},
            "writes": {"count": st.writes, "bytes": st.bytes_written},
            "removals_waiting": len(self.vfs.removals),
            "fsyncs": st.fsyncs,
            "deferred_fsyncs": st.deferred_fsyncs,
            "journal_syncs": st.journal_syncs,
            "inodes": len(self.vfs.ns.inodes),
            "open_files": len(self.vfs.handles),
            "workers": [
                {"index": c.index, "pid": c.pid, "alive": c.alive, "in_flight": len(c.pending),
                 "sent": c.sent, "restarts": len(self.router.restarts[c.index])}
                for c in self.router.conns
            ],
            "diff_bytes": _allocated(os.path.join(self.diff, "objects")),
        }
        if request.get("reset"):
            self.ops.latency.clear()
            self.ops.counts.clear()
            self.vfs.stats.__init__()  # type: ignore[misc]
            for c in self.router.conns:
                c.sent = 0
            self.since = time.time()
        return out


def _allocated(path: str) -> int:
    total = 0
    try:
        with os.scandir(path) as it:
            for e in it:
                try:
                    total += e.stat(follow_symlinks=False).st_blocks * 512
                except OSError:
                    pass
    except OSError:
        pass
    return total


