"""The block-map inspector refuses what it cannot read, clearly (no mount needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.env import REPO


def test_inspector_refusals(work: Path) -> None:
    def fails(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "tools.blockmap", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode != 0
        assert "Traceback" not in proc.stderr
        return proc.stderr

    assert "not mounted" in fails("--mount", str(work))
    assert "does not exist" in fails("--diff", str(work / "nope"))
    assert "not a pbkfs diff" in fails("--diff", str(work))
    assert "exactly one" in fails()
