"""Where the tests run: the checkout, the fixture sets, and CI's rule for missing facilities."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_FIXTURES = (REPO / ".." / "shared" / "fixtures").resolve()
CACHE_DIR = Path(os.environ.get("PBKFS_FIXTURE_CACHE", REPO / ".cache" / "fixtures"))


def in_ci() -> bool:
    """CI must fail, not skip, when a required facility is missing."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, what: str) -> None:
    """Skip locally but fail in CI when `what` is unavailable."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"required for this test but missing: {what}")
    pytest.skip(f"missing: {what}")
