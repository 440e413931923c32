"""The latency summaries the control socket reports (for `pbkfs stat`)."""

from __future__ import annotations

from pbkfs.mount.controlsocket import Latency


def test_latency_quantiles() -> None:
    lat = Latency()
    for us in [1] * 98 + [1000, 5000]:
        lat.add(us * 1000)
    s = lat.summary()
    assert s["count"] == 100 and s["p50_us"] <= 2 and 1000 <= s["p99_us"] <= 2048
