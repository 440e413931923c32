"""End to end, without a mount: each ARCHIVE-mode backup of pg15-archive, exported as restore
would write it plus pbkfs's recovery files, recovers in a real PostgreSQL 15 through
`pbkfs archive-get` on the fixture catalog and gives exactly the recorded query results
(recovery to the backup's consistent point, and to the end of the archive)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pbkfs.catalog.lsn import format_lsn
from pbkfs.catalog.store import Store
from pbkfs.recovery import (
    RecoveryPlan,
    RecoveryStatus,
    RecoveryTarget,
    inspect_recovery_dir,
    parse_target,
    plan_recovery,
    recovery_files,
)
from pbkfs.view import open_view
from pbkfs.view.export import export_tree
from tests.support.env import require
from tests.support.pbkfs_program import server_side_pbkfs
from tests.support.pitr import wait_until_paused, wait_until_promoted
from tests.support.postgres import (
    PgCluster,
    free_port,
    pg_workdir,
    postgres_available,
    prepare_datadir,
)
from tests.support.queries import run_queries
from tests.support.trees import tree_state

BACKUPS = ("TP2MRO", "TP2MRQ", "TP2MRW")


@pytest.fixture(scope="module")
def server_program() -> Iterator[Path]:
    require(postgres_available(), "PostgreSQL 15 binaries and the postgres OS user")
    with server_side_pbkfs() as program:
        yield program


def recover(catalog: Path, backup_id: str, requested: RecoveryTarget, program: Path,
            expected: dict[str, Any]) -> tuple[RecoveryPlan, dict[str, Any], str, RecoveryStatus]:
    """Export the backup, add the recovery files, start PostgreSQL, wait for the target,
    run the fixture's queries; the catalog must come out untouched."""
    store = Store(catalog)
    plan = plan_recovery(store.instance("arch"), requested, backup_id)
    assert plan.recovery and not plan.missing
    files = recovery_files(plan, catalog, program=str(program))
    assert set(files.create) == {"recovery.signal"}
    before = tree_state(catalog)
    with pg_workdir() as work:
        data = work / "data"
        export_tree(open_view(store, "arch", backup_id), data)
        files.apply_to(data)
        prepare_datadir(data)
        with PgCluster(data, free_port(), work / "sock") as pg:
            pg.start({"archive_mode": "off"})
            if plan.target.action == "promote" or plan.target.stop == "latest":
                wait_until_promoted(pg)
            else:
                wait_until_paused(pg)
            got = run_queries(pg, expected["sql"], expected["no_generic_md5"])
            pg.stop()
            log = pg.log_tail(200_000)
        status = inspect_recovery_dir(data)
    assert tree_state(catalog) == before, "the catalog was written to"
    return plan, got, log, status


@pytest.mark.parametrize("kind", ["immediate", "latest"])
@pytest.mark.parametrize("backup_id", BACKUPS)
def test_archive_backup_recovers_like_restore(fixtures_dir: Path, server_program: Path,
                                              backup_id: str, kind: str) -> None:
    base = fixtures_dir / "pg15-archive"
    expected = json.loads((base / "expected" / "arch" / f"{backup_id}.{kind}.queries.json")
                          .read_text())
    requested = parse_target() if kind == "immediate" else parse_target(target="latest")
    plan, got, log, status = recover(base / "catalog", backup_id, requested, server_program,
                                     expected)
    assert plan.target.stop == kind
    if kind == "immediate":
        assert plan.target.action == "promote"
    for key in ("server", "tablespaces", "databases"):
        assert got[key] == expected[key], key
    stop = format_lsn(plan.backup.control.stop_lsn)
    assert f"consistent recovery state reached at {stop}" in log
    assert f"pbkfs archive-get: delivered {plan.wal_first}" in log
    if kind == "immediate":
        assert "recovery stopping after reaching consistency" in log
    else:
        assert "pbkfs archive-get: delivered 000000010000000000000021" in log
        assert "000000010000000000000022: not in the WAL archive" in log
    assert status.finished and not status.recovery_signal and status.timeline == 2, \
        status.describe()


# An older backup recovered to a point where nothing changed until a newer backup was
# consistent must give that newer backup's recorded results.
PITR = [
    # TP2MRQ was taken in a quiet moment: last change before 18:45:26, next one at 18:45:29.0
    ("TP2MRO", {"time": "2026-11-25 18:45:27+00", "action": "promote"}, "TP2MRQ", True),
    ("TP2MRO", {"time": "2026-11-25 21:45:28.5+03", "action": "pause"}, "TP2MRQ", False),
    ("TP2MRO", {"lsn": "0/1B000B8", "action": "promote"}, "TP2MRQ", True),
    # TP2MRW was taken under load: the last transaction before its consistent point ended at
    # 18:45:33.485246, the next one at 18:45:33.584430
    ("TP2MRQ", {"time": "2026-11-25 18:45:33.485246+00", "action": "promote"}, "TP2MRW", True),
    ("TP2MRQ", {"time": "2026-11-25 18:45:33.584430+00", "inclusive": "false",
                "action": "pause"}, "TP2MRW", False),
]


@pytest.mark.parametrize(("backup_id", "options", "same_as", "promoted"), PITR)
def test_point_in_time_lands_on_target(fixtures_dir: Path, server_program: Path,
                                       backup_id: str, options: dict[str, str], same_as: str,
                                       promoted: bool) -> None:
    base = fixtures_dir / "pg15-archive"
    expected = json.loads((base / "expected" / "arch" / f"{same_as}.immediate.queries.json")
                          .read_text())
    plan, got, log, status = recover(base / "catalog", backup_id, parse_target(**options),
                                     server_program, expected)
    assert plan.backup.id == backup_id
    for db, want in expected["databases"].items():
        for key in want:
            if key != "sequences":
                assert got["databases"][db][key] == want[key], (db, key)
        # A sequence recovered from WAL resumes from its logged value, up to 32 (SEQ_LOG_VALS)
        # past the last value the backup's copied page shows.
        for seq, value in want["sequences"].items():
            ahead = int(got["databases"][db]["sequences"][seq]) - int(value)
            assert 0 <= ahead <= 32, (seq, value, ahead)
    assert got["server"]["pg_is_in_recovery"] == ("f" if promoted else "t")
    assert "recovery stopping" in log
    if promoted:
        assert status.finished and status.timeline == 2, status.describe()
    else:
        assert status.recovery_signal and not status.finished, status.describe()
