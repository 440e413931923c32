"""`pbkfs stat` on something that is not a mount: a clear refusal."""

from __future__ import annotations

from pathlib import Path

from tests.support.mounting import pbkfs


def test_stat_refuses_a_plain_directory(tmp_path: Path) -> None:
    proc = pbkfs("stat", "-D", str(tmp_path), check=False)
    assert proc.returncode == 1
    assert "not a running pbkfs mount" in proc.stderr
    assert "Traceback" not in proc.stderr
