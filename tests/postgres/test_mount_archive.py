"""ARCHIVE-mode backups and point-in-time targets, mounted: real FUSE, real PostgreSQL 15,
WAL through `pbkfs archive-get` from the catalog's archive."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbkfs.recovery import RecoveryFiles, RecoveryPlan
from tests.support.mounting import is_mounted, mounted, pbkfs, require_fuse
from tests.support.pbkfs_program import restore_program
from tests.support.pitr import (
    Case,
    PitrSource,
    build_source,
    run_case,
    target_options,
    wait_until_promoted,
)
from tests.support.postgres import (
    PgCluster,
    free_port,
    make_owned_dir,
    require_postgres,
)
from tests.support.queries import run_queries
from tests.support.trees import tree_state

pytestmark = pytest.mark.mount
BACKUPS = ("TP2MRO", "TP2MRQ", "TP2MRW")


@pytest.fixture(scope="module")
def program() -> Iterator[Path]:
    """A pbkfs the server's OS user can run, used in restore_command by every mount here."""
    require_fuse()
    require_postgres()
    with restore_program() as prog:
        yield prog


@contextlib.contextmanager
def server(mnt: Path, work: Path) -> Iterator[PgCluster]:
    pg = PgCluster(mnt, free_port(), make_owned_dir(work / f"sock{free_port()}", 0o755))
    with pg:
        pg.start()
        yield pg


@pytest.mark.parametrize("kind", ["immediate", "latest"])
@pytest.mark.parametrize("backup_id", BACKUPS)
def test_archive_backup_mounted_recovers_like_restore(fixtures_dir: Path, program: Path,
                                                      work: Path, backup_id: str,
                                                      kind: str) -> None:
    base = fixtures_dir / "pg15-archive"
    catalog = base / "catalog"
    expected = json.loads((base / "expected" / "arch" / f"{backup_id}.{kind}.queries.json")
                          .read_text())
    before = tree_state(catalog)
    mnt, diff = make_owned_dir(work / "mnt"), work / "diff"
    extra = [] if kind == "immediate" else ["--recovery-target=latest"]
    with mounted(mnt, diff, store=catalog, instance="arch", backup_id=backup_id, extra=extra):
        assert (mnt / "recovery.signal").exists()
        conf = (mnt / "postgresql.auto.conf").read_text()
        assert f"restore_command = '\"{program}\" archive-get -B \"{catalog}\"" in conf
        with server(mnt, work) as pg:
            wait_until_promoted(pg)
            got = run_queries(pg, expected["sql"], expected["no_generic_md5"])
            pg.stop()
            log = pg.log_tail(200_000)
        for key in ("server", "tablespaces", "databases"):
            assert got[key] == expected[key], key
        assert "archive-get: delivered" in log
        assert not (mnt / "recovery.signal").exists()
    # a remount of the finished diff opens without recovering again
    with mounted(mnt, diff, store=catalog, instance="arch", backup_id=backup_id):
        assert not (mnt / "recovery.signal").exists()
        with server(mnt, work) as pg:
            assert pg.psql("SELECT pg_is_in_recovery()") == "f"
            db = "postgres"
            table = sorted(expected["databases"][db]["row_counts"])[0]
            count = pg.psql(f"SELECT count(*) FROM {table}")
            assert int(count) == expected["databases"][db]["row_counts"][table]
            pg.stop()
            assert "archive-get" not in pg.log_tail(200_000).split("database system is ready")[-1]
    assert tree_state(catalog) == before


def test_remount_refuses_another_target(fixtures_dir: Path, program: Path, work: Path) -> None:
    catalog = fixtures_dir / "pg15-archive" / "catalog"
    mnt, diff = make_owned_dir(work / "mnt"), work / "diff"
    with mounted(mnt, diff, store=catalog, instance="arch", backup_id="TP2MRO"):
        pass
    proc = pbkfs("mount", "-D", str(mnt), "-d", str(diff), "-B", str(catalog), "--instance",
                 "arch", "-i", "TP2MRO", "--recovery-target=latest", check=False)
    assert proc.returncode != 0 and "cannot recover again" in proc.stderr
    assert not is_mounted(mnt)


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_precheck_refuses_a_hole_in_the_archive(fixtures_dir: Path, program: Path, work: Path,
                                                damage: str) -> None:
    catalog = work / "catalog"
    shutil.copytree(fixtures_dir / "pg15-archive" / "catalog", catalog)
    seg = catalog / "wal" / "arch" / "00000001000000000000001F.gz"
    if damage == "missing":
        seg.unlink()
    else:
        data = bytearray(seg.read_bytes())
        data[len(data) // 2] ^= 0xFF
        seg.write_bytes(bytes(data))
    before = tree_state(catalog)
    mnt, diff = make_owned_dir(work / "mnt"), work / "diff"
    proc = pbkfs("mount", "-D", str(mnt), "-d", str(diff), "-B", str(catalog), "--instance",
                 "arch", "-i", "TP2MRW", check=False)
    assert proc.returncode != 0
    assert "00000001000000000000001F" in proc.stderr, proc.stderr
    assert not is_mounted(mnt) and not diff.exists()
    assert tree_state(catalog) == before


# -- point in time, on a cluster made here (tests/support/pitr.py) -------------------------

@pytest.fixture(scope="module")
def source(program: Path) -> Iterator[PitrSource]:
    from tests.support.pbkfs_program import server_side_mkbackup

    with server_side_mkbackup() as push, build_source(push) as src:
        yield src


def mounted_factory(source: PitrSource, work: Path, options: dict[str, str],
                    choose: bool):
    """A DatadirFactory mounting the plan's backup with the same target options."""

    @contextlib.contextmanager
    def factory(plan: RecoveryPlan, files: RecoveryFiles) -> Iterator[Path]:
        mnt, diff = make_owned_dir(work / "mnt"), work / "diff"
        args = [f"--recovery-target-{k}={v}" if k != "target" else f"--recovery-target={v}"
                for k, v in options.items()]
        ident = [] if choose else ["-i", plan.backup.id]
        pbkfs("mount", "-D", str(mnt), "-d", str(diff), "-B", str(source.catalog),
              "--instance", source.instance, *ident, *args)
        try:
            yield mnt
        finally:
            if is_mounted(mnt):
                pbkfs("unmount", "-D", str(mnt))

    return factory


def cases(src: PitrSource) -> list[Case]:
    return [
        Case("time-inclusive-pause", target_options(src, "time", 2), "FULL", "FULL", 2, False),
        Case("xid-exclusive-promote",
             target_options(src, "xid", 3, inclusive="false", action="promote"),
             "DELTA", "DELTA", 2, True),
        Case("name-instance-alone", target_options(src, "name", 3, action="promote"), None,
             "DELTA", 3, True),
    ]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_point_in_time_mount_lands_on_target(source: PitrSource, program: Path, work: Path,
                                             which: int) -> None:
    case = cases(source)[which]
    run_case(source, case, program, mounted_factory(source, work, case.options,
                                                    choose=case.backup is None))
