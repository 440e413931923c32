"""`pbkfs stat`: live figures move as a mount is used; Prometheus output parses; --reset."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.mounting import mounted, pbkfs, stat_json
from tests.support.prometheus import parse_prometheus


def test_stat_moves_parses_and_resets(work: Path) -> None:
    base = work / "base"
    base.mkdir()
    (base / "file").write_bytes(os.urandom(200_000))
    mnt, diff = work / "mnt", work / "diff"
    with mounted(mnt, diff, plain=base):
        before = stat_json(mnt)
        data = (mnt / "file").read_bytes()
        with open(mnt / "copy", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        after = stat_json(mnt)
        assert after["reads"]["bytes"] >= before["reads"]["bytes"] + 200_000
        assert after["writes"]["bytes"] >= before["writes"]["bytes"] + 200_000
        assert after["fsyncs"] > before["fsyncs"]
        assert after["diff_bytes"] >= 200_000
        cpu = after["cpu"]  # where a request's CPU goes: the frontend's Python, the workers'
        assert cpu["requests"] > 0 and cpu["frontend_s"] > 0
        assert cpu["frontend_us_per_request"] > 0 and cpu["workers_s"] >= 0

        text = pbkfs("stat", "-D", str(mnt)).stdout
        assert "operation" in text and "read" in text and "worker" in text
        assert "us per request" in text

        prom = pbkfs("stat", "-D", str(mnt), "--format", "prometheus").stdout
        types, samples = parse_prometheus(prom)
        assert all(name.startswith("pbkfs_") for name in types)
        assert types["pbkfs_operation_latency_microseconds"] == "summary"
        assert all(t != "counter" or n.endswith("_total") for n, t in types.items())
        assert samples[("pbkfs_write_bytes_total", ())] >= 200_000
        p50 = samples[("pbkfs_operation_latency_microseconds",
                       (("op", "read"), ("quantile", "0.5")))]
        p99 = samples[("pbkfs_operation_latency_microseconds",
                       (("op", "read"), ("quantile", "0.99")))]
        assert 0 < p50 <= p99
        assert samples[("pbkfs_operation_latency_microseconds_count", (("op", "read"),))] >= 1
        assert samples[("pbkfs_worker_up", (("worker", "0"),))] == 1
        assert ("pbkfs_worker_requests_total", (("worker", "1"),)) in samples

        pbkfs("stat", "-D", str(mnt), "--reset")
        zeroed = stat_json(mnt)
        assert zeroed["writes"]["bytes"] == 0 and zeroed["reads"]["bytes"] == 0
        assert zeroed["fsyncs"] == 0 and "write" not in zeroed["operations"]
        assert all(w["sent"] == 0 for w in zeroed["workers"])
        assert zeroed["diff_bytes"] >= 200_000  # a gauge: not reset
        assert zeroed["uptime_s"] >= after["uptime_s"]
    refused = pbkfs("stat", "-D", str(mnt), check=False)
    assert refused.returncode != 0 and "not a running pbkfs mount" in refused.stderr
