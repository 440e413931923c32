"""Reading the fixtures' expected listings (`expected/<instance>/<id>.tsv`) and comparing trees."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

Row = tuple[str, str, str, str]  # type, mode (4 octal digits), size, sha256 or link target

# Files restore writes or changes itself (fixture READMEs): compared separately.
RESTORE_WRITES = {"postgresql.auto.conf", "recovery.signal", "standby.signal"}
MODE_DIFFERS = {"global/pg_control"}


def read_tsv(path: Path) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        p, kind, mode, size, digest = line.split("\t")
        rows[p] = (kind, mode, size, digest)
    return rows


def expected_sets(fixtures_dir: Path, names: Iterable[str]) -> list[tuple[str, str, str]]:
    """(set, instance, backup id) of every backup with an expected listing."""
    out = []
    for name in names:
        for tsv in sorted((fixtures_dir / name / "expected").glob("*/*.tsv")):
            out.append((name, tsv.parent.name, tsv.stem))
    return out


def sha256_chunks(chunks: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def compare_listing(
    actual: dict[str, Row],
    expected: dict[str, Row],
    tablespace_links: dict[str, str],
    auto_conf_check: Callable[[Row, Row], None] | None = None,
) -> list[str]:
    """Differences between an actual listing and restore's, with the documented allowances.

    Allowed: files restore writes itself (postgresql.auto.conf content, recovery.signal), the mode
    of global/pg_control, and tablespace links shown as in-place directories.
    """
    problems = []
    for path in sorted(set(actual) | set(expected)):
        a, e = actual.get(path), expected.get(path)
        if path in RESTORE_WRITES:
            if path == "postgresql.auto.conf" and a and e and auto_conf_check:
                auto_conf_check(a, e)
            continue
        if a is None or e is None:
            problems.append(f"{path}: {'missing' if a is None else 'unexpected'} "
                            f"(expected {e}, got {a})")
            continue
        if e[0] == "l" and path in tablespace_links:
            if a[0] != "d" or tablespace_links[path] != e[3] or a[1] != e[1]:
                problems.append(f"{path}: tablespace {a} vs {e}, link {tablespace_links[path]}")
            continue
        if path in MODE_DIFFERS:
            a = (a[0], e[1], a[2], a[3])
        if a != e:
            problems.append(f"{path}: got {a}, expected {e}")
    return problems
