"""What the control socket of a live mount reports (see pbkfs.mount.controlsocket)."""

from __future__ import annotations

import os
import time
from typing import Any

from pbkfs.fs.vfs import Vfs
from pbkfs.ipc.router import Router
from pbkfs.mount.fuseops import Operations
from pbkfs.storage.stats import gathered, summary


class MountStats:
    """What the control socket reports: requests, latencies, workers, the diff."""

    def __init__(self, ops: Operations, vfs: Vfs, router: Router, diff: str,
                 store_stats: str = "") -> None:
        self.ops = ops
        self.vfs = vfs
        self.router = router
        self.diff = diff
        self.started = time.time()
        self.since = time.time()
        self.cpu_base = self._cpu()  # CPU seconds of the frontend and of every worker pid
        self.requests_base = 0
        self.store_stats = store_stats  # directory the workers publish store figures to

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
            "cpu": self._cpu_figures(),
        }
        if self.store_stats:  # an s3:// catalog: requests, bytes, cache, latency
            out["store"] = summary(gathered(self.store_stats))
        if request.get("reset"):
            self.ops.latency.clear()
            self.ops.counts.clear()
            self.vfs.stats.__init__()  # type: ignore[misc]
            for c in self.router.conns:
                c.sent = 0
            self.since = time.time()
            self.cpu_base = self._cpu()
            self.requests_base = 0
        return out

    def _cpu(self) -> dict[str, float]:
        out = {"frontend": time.process_time()}  # all threads, ns resolution
        for c in self.router.conns:
            out[str(c.pid)] = _proc_cpu(c.pid)
        return out

    def _cpu_figures(self) -> dict[str, Any]:
        """CPU seconds since the counters' start, and CPU µs per kernel request: where a
        request's cost goes (the frontend's Python work, the workers')."""
        now = self._cpu()
        used = {k: max(v - self.cpu_base.get(k, 0.0), 0.0) for k, v in now.items()}
        front = used.pop("frontend")
        workers = sum(used.values())
        requests = sum(self.ops.counts.values())
        per = (lambda s: round(s * 1e6 / requests, 1)) if requests else (lambda s: 0.0)
        return {"frontend_s": round(front, 3), "workers_s": round(workers, 3),
                "requests": requests, "frontend_us_per_request": per(front),
                "workers_us_per_request": per(workers)}


def _proc_cpu(pid: int) -> float:
    """utime + stime of a process in seconds (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


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


