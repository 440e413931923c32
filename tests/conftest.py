"""The test suite, in layers; each directory needs more of the machine than the one before.

* tests/unit/: pure logic, no processes (no FUSE, no PostgreSQL, no workers);
* tests/core/: the FUSE-free core with real processes (Vfs + Router + workers, CLI runs
  that don't mount);
* tests/mount/: real FUSE mounts; every test there is marked `mount`;
* tests/postgres/: a real PostgreSQL 15 (on a mount or not); marked `postgres`, and
  `mount` too where it mounts;
* tests/s3/: catalogs in a real S3 server (SeaweedFS on loopback), mounted with
  PostgreSQL, with faults injected by a proxy;
* tests/support/: every shared helper and fixture (tests/support/fixtures.py).

`make test-fast` runs the first two. A test marked `mount` or `postgres` whose facility is
missing is skipped locally and fails in CI (CI=true).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.support.fixtures"]

TESTS = Path(__file__).resolve().parent
LAYERS = ("unit", "core", "mount", "postgres", "s3")
NEEDS = ("mount", "postgres")  # markers of facilities the unit and core layers never use


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test lives in a layer, and the unit and core layers need no facility."""
    wrong = []
    for item in items:
        rel = item.path.resolve().relative_to(TESTS)
        if len(rel.parts) < 2 or rel.parts[0] not in LAYERS:
            wrong.append(f"{item.nodeid}: not in a layer directory ({', '.join(LAYERS)})")
        elif rel.parts[0] in ("unit", "core"):
            marks = [m for m in NEEDS if item.get_closest_marker(m) is not None]
            if marks:
                wrong.append(f"{item.nodeid}: marked {', '.join(marks)} but in "
                             f"tests/{rel.parts[0]}/ (move it to tests/{marks[-1]}/)")
    if wrong:
        raise pytest.UsageError("tests out of their layer:\n" + "\n".join(wrong))
