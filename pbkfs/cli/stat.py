"""`pbkfs stat`: the live figures of a running mount, from its control socket.

Text for people, JSON for scripts, Prometheus text exposition for scrapers.
"""

from __future__ import annotations

import json
import os
from typing import Any

import click

from pbkfs.cli.common import reports_errors
from pbkfs.errors import UsageError

FORMATS = ("text", "json", "prometheus")


@click.command("stat")
@click.option("-D", "--pgdata", "mountpoint", required=True, type=click.Path(path_type=str),
              help="The mount point of a running pbkfs mount.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True,
              help="Output format.")
@click.option("--reset", is_flag=True,
              help="Zero the counters after reading them (gauges such as queue depth stay).")
@reports_errors
def stat(mountpoint: str, fmt: str, reset: bool) -> None:
    """Show live figures of a running mount: operations, workers, reads/writes, the diff."""
    figures = fetch(mountpoint, reset=reset)
    if fmt == "json":
        click.echo(json.dumps(figures, indent=2, sort_keys=True))
    elif fmt == "prometheus":
        click.echo(to_prometheus(figures), nl=False)
    else:
        click.echo(to_text(figures), nl=False)


def fetch(mountpoint: str, *, reset: bool = False) -> dict[str, Any]:
    """Ask the mount's control socket (found through its runtime record)."""
    from pbkfs.mount.controlsocket import query
    from pbkfs.mount.runtime import read_record, sweep_stale

    mnt = os.path.abspath(mountpoint)
    sweep_stale()  # records of dead mounts go (this one's too: then it is not running)
    rec = read_record(mnt)
    if rec is None or not rec.control:
        raise UsageError(f"{mnt} is not a running pbkfs mount (no runtime record)")
    request: dict[str, Any] = {"cmd": "stat"}
    if reset:
        request["reset"] = True
    try:
        reply = query(rec.control, request)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{mnt}: the mount's control socket {rec.control} does not answer "
                         f"({exc}); is the mount process (pid {rec.pid}) running?") from None
    if "error" in reply:
        raise UsageError(f"{mnt}: the mount answered: {reply['error']}")
    return reply


def to_text(f: dict[str, Any]) -> str:
    """A readable table."""
    lines = [f"pid {f.get('pid')}  uptime {f.get('uptime_s')} s  "
             f"counters since {f.get('counters_since_s')} s"]
    reads, writes = f.get("reads", {}), f.get("writes", {})
    lines.append(f"reads   {reads.get('bytes', 0)} bytes; hot path {reads.get('frontend', 0)}, "
                 f"worker round trips {reads.get('worker', 0)}")
    lines.append(f"writes  {writes.get('count', 0)} ({writes.get('bytes', 0)} bytes), "
                 f"objects awaiting removal {f.get('removals_waiting', 0)}")
    lines.append(f"fsyncs  {f.get('fsyncs', 0)} (deferred {f.get('deferred_fsyncs', 0)})  "
                 f"journal syncs {f.get('journal_syncs', 0)}")
    lines.append(f"inodes  {f.get('inodes', 0)}  open files {f.get('open_files', 0)}  "
                 f"diff {f.get('diff_bytes', 0)} bytes")
    cpu = f.get("cpu", {})
    lines.append(f"cpu     frontend {cpu.get('frontend_s', 0)} s "
                 f"({cpu.get('frontend_us_per_request', 0)} us per request), workers "
                 f"{cpu.get('workers_s', 0)} s ({cpu.get('workers_us_per_request', 0)} us per "
                 f"request), {cpu.get('requests', 0)} requests")
    store = f.get("store")
    if store:
        lines.append(f"store   {store['requests']} requests ({store['retries']} retried, "
                     f"{store['failures']} failed), {store['bytes_fetched']} bytes fetched; "
                     f"cache {store['cache_hits']} hits, {store['cache_misses']} misses; "
                     f"latency p50 {store['latency_p50_ms']} ms, p99 "
                     f"{store['latency_p99_ms']} ms")
    lines.append("")
    lines.append(f"{'operation':<14}{'count':>10}{'mean us':>12}{'p50 us':>12}{'p99 us':>12}")
    for name, op in sorted(f.get("operations", {}).items()):
        lines.append(f"{name:<14}{op['count']:>10}{op['mean_us']:>12}{op['p50_us']:>12}"
                     f"{op['p99_us']:>12}")
    lines.append("")
    lines.append(f"{'worker':<8}{'pid':>8}{'alive':>7}{'in flight':>11}{'sent':>10}"
                 f"{'restarts':>10}")
    for w in f.get("workers", []):
        lines.append(f"{w['index']:<8}{w['pid']:>8}{'yes' if w['alive'] else 'no':>7}"
                     f"{w['in_flight']:>11}{w['sent']:>10}{w['restarts']:>10}")
    return "\n".join(lines) + "\n"


class _Exposition:
    """Collects metric families; each gets HELP and TYPE once, then its samples."""

    def __init__(self) -> None:
        self.out: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: list[tuple[str, dict[str, str], float]]) -> None:
        self.out.append(f"# HELP pbkfs_{name} {help_text}")
        self.out.append(f"# TYPE pbkfs_{name} {kind}")
        for suffix, labels, value in samples:
            self.out.append(f"pbkfs_{name}{suffix}{_labels(labels)} {_number(value)}")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int) or float(v).is_integer():
        return str(int(v))
    return repr(float(v))


def to_prometheus(f: dict[str, Any]) -> str:
    """Prometheus text exposition format (version 0.0.4)."""
    e = _Exposition()
    e.family("uptime_seconds", "gauge", "Seconds since the mount started.",
             [("", {}, f.get("uptime_s", 0))])
    ops = sorted(f.get("operations", {}).items())
    e.family("operation_latency_microseconds", "summary",
             "Latency of FUSE operations (power-of-two bucket upper bounds).",
             [s for name, op in ops for s in (
                 ("", {"op": name, "quantile": "0.5"}, op["p50_us"]),
                 ("", {"op": name, "quantile": "0.99"}, op["p99_us"]),
                 ("_sum", {"op": name}, op["mean_us"] * op["count"]),
                 ("_count", {"op": name}, op["count"]))])
    reads, writes = f.get("reads", {}), f.get("writes", {})
    e.family("reads_total", "counter", "Reads answered, by where they were served.",
             [("", {"path": "hot"}, reads.get("frontend", 0)),
              ("", {"path": "worker"}, reads.get("worker", 0))])
    e.family("read_bytes_total", "counter", "Bytes read through the mount.",
             [("", {}, reads.get("bytes", 0))])
    e.family("writes_total", "counter", "Write requests.", [("", {}, writes.get("count", 0))])
    e.family("write_bytes_total", "counter", "Bytes written through the mount.",
             [("", {}, writes.get("bytes", 0))])
    e.family("removals_waiting", "gauge",
             "Diff objects whose removal waits for a durable journal record.",
             [("", {}, f.get("removals_waiting", 0))])
    e.family("fsyncs_total", "counter", "fsync requests.", [("", {}, f.get("fsyncs", 0))])
    e.family("deferred_fsyncs_total", "counter", "fsyncs only recorded (--perf-unsafe).",
             [("", {}, f.get("deferred_fsyncs", 0))])
    e.family("journal_syncs_total", "counter", "Namespace journal syncs.",
             [("", {}, f.get("journal_syncs", 0))])
    e.family("inodes", "gauge", "Inodes known to the mount.", [("", {}, f.get("inodes", 0))])
    store = f.get("store")
    if store:
        e.family("store_requests_total", "counter", "Object-store requests (s3:// catalogs).",
                 [("", {}, store["requests"])])
        e.family("store_retries_total", "counter", "Object-store requests retried.",
                 [("", {}, store["retries"])])
        e.family("store_failures_total", "counter", "Object-store attempts that failed.",
                 [("", {}, store["failures"])])
        e.family("store_fetched_bytes_total", "counter", "Bytes fetched from the store.",
                 [("", {}, store["bytes_fetched"])])
        e.family("store_cache_total", "counter", "Local cache lookups of store bytes.",
                 [("", {"result": "hit"}, store["cache_hits"]),
                  ("", {"result": "miss"}, store["cache_misses"])])
        e.family("store_latency_milliseconds", "gauge",
                 "Object-store request latency (histogram bucket upper bounds).",
                 [("", {"quantile": "0.5"}, store["latency_p50_ms"]),
                  ("", {"quantile": "0.99"}, store["latency_p99_ms"])])
    e.family("open_files", "gauge", "Open file handles.", [("", {}, f.get("open_files", 0))])
    e.family("diff_bytes", "gauge", "Bytes allocated by the diff's block objects.",
             [("", {}, f.get("diff_bytes", 0))])
    workers = f.get("workers", [])
    e.family("worker_up", "gauge", "1 if the worker process is alive.",
             [("", {"worker": str(w["index"])}, 1 if w["alive"] else 0) for w in workers])
    e.family("worker_queue_depth", "gauge", "Requests in flight to the worker.",
             [("", {"worker": str(w["index"])}, w["in_flight"]) for w in workers])
    e.family("worker_requests_total", "counter", "Requests sent to the worker.",
             [("", {"worker": str(w["index"])}, w["sent"]) for w in workers])
    e.family("worker_restarts_total", "counter", "Times the worker was restarted.",
             [("", {"worker": str(w["index"])}, w["restarts"]) for w in workers])
    return "\n".join(e.out) + "\n"
