"""Point-in-time recovery of writer-made ARCHIVE backups, without a mount.

A real cluster archives its WAL into a catalog through `mkbackup archive-push`;
an ARCHIVE FULL and DELTA are taken around committed steps (tests/support/pitr.py).
Each target kind (time, xid, LSN, restore point name; inclusive and exclusive;
pause and promote; a given backup or `--instance` alone) is recovered by a
real PostgreSQL 15 from the exported backup through `pbkfs archive-get`, and
must show exactly the work committed up to the target. A missing or damaged
archived segment is reported clearly by archive-get and by the pre-check,
and nothing ever writes to the catalog.
"""

from __future__ import annotations

import functools
import gzip
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbkfs.catalog.store import Store
from pbkfs.errors import CatalogError
from pbkfs.recovery import parse_target, plan_recovery, require_archive_covers
from pbkfs.walarchive.names import segment_name
from tests.support.pbkfs_program import server_side_mkbackup, server_side_pbkfs
from tests.support.pitr import (
    INSTANCE,
    Case,
    PitrSource,
    build_source,
    exported_datadir,
    run_case,
    target_options,
)
from tests.support.postgres import require_postgres
from tests.support.trees import tree_state

PBKFS = Path(sys.executable).parent / "pbkfs"


@pytest.fixture(scope="module")
def programs() -> Iterator[tuple[Path, Path]]:
    """(pbkfs archive-get, mkbackup archive-push) wrappers the server can run."""
    require_postgres()
    with server_side_pbkfs() as pbkfs, server_side_mkbackup() as mkbackup:
        yield pbkfs, mkbackup


@pytest.fixture(scope="module")
def source(programs: tuple[Path, Path]) -> Iterator[PitrSource]:
    with build_source(programs[1]) as src:
        yield src


def test_source_is_an_archive_catalog(source: PitrSource) -> None:
    """The scenario is what the cases assume: two ARCHIVE backups, steps around them."""
    inst = Store(source.catalog).instance(INSTANCE)
    full, delta = inst.backup(source.full_id), inst.backup(source.delta_id)
    assert not full.control.stream and not delta.control.stream
    assert delta.control.parent_backup_id == source.full_id
    s = source.steps
    assert full.control.stop_lsn < delta.control.start_lsn
    assert s[2].xid < (delta.control.recovery_xid or 0) <= s[3].xid
    assert len({str(sorted(source.state(n).items())) for n in range(5)}) == 5
    assert not list((source.catalog / "wal" / INSTANCE).glob("*.part"))


# id, target kind (None: options only), at step, extra options, backup asked for,
# backup the plan must choose, step whose state must come out, promoted
CASES = [
    ("time-inclusive-pause", "time", 3, {"action": "pause"}, None, "DELTA", 3, False),
    ("time-exclusive-promote", "time", 3, {"inclusive": "false", "action": "promote"},
     None, "DELTA", 2, True),
    ("time-after-commit-full", "time_after", 1, {"action": "promote"}, None, "FULL", 1, True),
    ("xid-inclusive-promote", "xid", 4, {"action": "promote"}, None, "DELTA", 4, True),
    ("xid-exclusive-pause-from-full", "xid", 4, {"inclusive": "false", "action": "pause"},
     "FULL", "FULL", 3, False),
    ("xid-exclusive-full", "xid", 2, {"inclusive": "false", "action": "promote"},
     None, "FULL", 1, True),
    ("lsn-inclusive-pause", "lsn", 3, {"action": "pause"}, None, "DELTA", 3, False),
    ("lsn-exclusive-promote", "lsn", 3, {"inclusive": "false", "action": "promote"},
     None, "DELTA", 2, True),
    ("lsn-inclusive-full", "lsn", 1, {"inclusive": "true", "action": "promote"},
     None, "FULL", 1, True),
    ("name-pause-from-full", "name", 2, {"action": "pause"}, "FULL", "FULL", 2, False),
    ("name-promote", "name", 4, {"action": "promote"}, None, "DELTA", 4, True),
    ("default-immediate-delta", None, 0, {}, "DELTA", "DELTA", 2, True),
    ("latest-from-full", None, 0, {"target": "latest"}, "FULL", "FULL", 4, True),
]


@pytest.mark.parametrize(
    ("kind", "at", "extra", "backup", "chosen", "step", "promoted"),
    [pytest.param(*c[1:], id=c[0]) for c in CASES],
)
def test_recovery_lands_on_target(source: PitrSource, programs: tuple[Path, Path],
                                  kind: str | None, at: int, extra: dict[str, str],
                                  backup: str | None, chosen: str, step: int,
                                  promoted: bool) -> None:
    options = target_options(source, kind, at, **extra) if kind else dict(extra)
    case = Case(f"{kind}@{at}", options, backup, chosen, step, promoted)
    out = run_case(source, case, programs[0], functools.partial(exported_datadir, source))
    first = out.plan.wal_first
    assert f"pbkfs archive-get: delivered {first}" in out.log


# -- damaged archives ---------------------------------------------------------------------

def _archive_get(catalog: Path, name: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    (cwd / "pg_wal").mkdir(exist_ok=True)
    return subprocess.run(
        [str(PBKFS), "archive-get", "-B", str(catalog), "--instance", INSTANCE,
         "--wal-file-path=pg_wal/RECOVERYXLOG", f"--wal-file-name={name}"],
        cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def _delta_stop_segment(catalog: Path, delta_id: str) -> str:
    inst = Store(catalog).instance(INSTANCE)
    c = inst.backup(delta_id).control
    seg = inst.config.xlog_seg_size
    return segment_name(c.timeline, c.stop_lsn // seg, seg)


def _damage(path: Path, how: str, catalog: Path) -> None:
    if how == "missing":
        path.unlink()
    elif how in ("bit-flip", "bad-checksum"):
        # early in the deflate stream (a flip inside a long run of zeros can decode to the
        # same bytes), or in the gzip trailer's CRC-32
        raw = bytearray(path.read_bytes())
        raw[16 if how == "bit-flip" else -8] ^= 0x55
        path.write_bytes(bytes(raw))
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # "wrong-segment": a valid gzip of another segment under this name
        others = sorted(p for p in (catalog / "wal" / INSTANCE).glob("*.gz") if p != path)
        path.write_bytes(gzip.compress(gzip.decompress(others[0].read_bytes())))


@pytest.mark.parametrize("how", ["missing", "bit-flip", "bad-checksum", "truncated",
                                 "wrong-segment"])
def test_damaged_segment_is_reported(source: PitrSource, tmp_path: Path, how: str) -> None:
    catalog = tmp_path / "catalog"
    shutil.copytree(source.catalog, catalog)
    name = _delta_stop_segment(catalog, source.delta_id)
    _damage(catalog / "wal" / INSTANCE / f"{name}.gz", how, catalog)
    before = tree_state(catalog)
    work = tmp_path / "data"
    work.mkdir()

    r = _archive_get(catalog, name, work)
    assert not (work / "pg_wal" / "RECOVERYXLOG").exists()
    if how == "missing":
        assert r.returncode == 1, r.stderr
        assert f"pbkfs archive-get: {name}: not in the WAL archive" in r.stderr
    else:
        assert r.returncode == 2, r.stderr
        assert f"pbkfs archive-get: error: {name}:" in r.stderr
        assert f"{name}.gz" in r.stderr

    inst = Store(catalog).instance(INSTANCE)
    delta = inst.backup(source.delta_id)
    with pytest.raises(CatalogError) as err:
        require_archive_covers(inst, delta)
    text = str(err.value)
    assert f"backup {source.delta_id} cannot become consistent" in text
    assert f"{name}: {'missing' if how == 'missing' else 'damaged'}" in text
    # the FULL backup does not need that segment
    require_archive_covers(inst, inst.backup(source.full_id))
    plan = plan_recovery(inst, parse_target(), source.delta_id)
    if how == "missing":
        assert plan.missing == (name,)
        with pytest.raises(CatalogError, match=name):
            plan.require_wal()
    assert tree_state(catalog) == before, "the catalog was written to"


def test_healthy_archive_delivers_every_segment(source: PitrSource, tmp_path: Path) -> None:
    """Control for the damaged cases: the same calls succeed on the untouched catalog."""
    before = tree_state(source.catalog)
    name = _delta_stop_segment(source.catalog, source.delta_id)
    r = _archive_get(source.catalog, name, tmp_path)
    assert r.returncode == 0, r.stderr
    data = (tmp_path / "pg_wal" / "RECOVERYXLOG").read_bytes()
    seg = Store(source.catalog).instance(INSTANCE).config.xlog_seg_size
    assert len(data) == seg
    inst = Store(source.catalog).instance(INSTANCE)
    for backup_id in (source.full_id, source.delta_id):
        require_archive_covers(inst, inst.backup(backup_id))
    assert tree_state(source.catalog) == before
