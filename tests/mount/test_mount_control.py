"""The control socket of a live mount answers with current figures (for `pbkfs stat`)."""

from __future__ import annotations

import os
from pathlib import Path

from pbkfs.mount.controlsocket import query
from pbkfs.mount.runtime import read_record
from tests.support.mounting import mounted


def test_stat_figures_move_and_reset(work: Path) -> None:
    base = work / "base"
    base.mkdir()
    (base / "file").write_bytes(os.urandom(100_000))
    mnt, diff = work / "mnt", work / "diff"
    with mounted(mnt, diff, plain=base):
        rec = read_record(str(mnt))
        assert rec is not None and rec.control
        assert oct(os.stat(rec.control).st_mode & 0o777) == "0o600"
        first = query(rec.control, {"cmd": "stat"})
        assert first["uptime_s"] >= 0 and len(first["workers"]) == 2
        assert all(w["alive"] for w in first["workers"])
        data = (mnt / "file").read_bytes()
        with open(mnt / "new", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        second = query(rec.control, {"cmd": "stat"})
        assert second["reads"]["bytes"] >= 100_000
        assert second["writes"]["bytes"] >= 100_000
        assert second["operations"]["fsync"]["count"] >= 1
        assert second["operations"]["read"]["p99_us"] >= second["operations"]["read"]["p50_us"]
        assert second["diff_bytes"] >= 100_000
        query(rec.control, {"cmd": "stat", "reset": True})
        third = query(rec.control, {"cmd": "stat"})
        assert "read" not in third["operations"] and third["writes"]["bytes"] == 0
        assert "error" in query(rec.control, {"cmd": "nonsense"})
    assert not os.path.exists(rec.control)
