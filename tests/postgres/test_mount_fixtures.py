"""Every stream backup of the real fixtures, mounted: the tree equals what restore wrote,
and PostgreSQL 15 (as `postgres`) starts on the mount and returns the recorded results."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from pbkfs.view import open_view
from tests.support.expected import Row, compare_listing, read_tsv
from tests.support.mounting import mounted
from tests.support.postgres import (
    PgCluster,
    free_port,
    make_owned_dir,
)
from tests.support.queries import run_queries
from tests.support.trees import tree_state

pytestmark = pytest.mark.mount

SMALL = [
    ("pg15", "main", "TP2KB6"), ("pg15", "main", "TP2KBJ"), ("pg15", "main", "TP2KBV"),
    ("pg15", "main", "TP2KC3"), ("pg15", "main", "TP2KCC"), ("pg15", "nochk", "TP2KCQ"),
    ("pg15", "nochk", "TP2KD0"),
]
BIG = [("pg15-bigrel", "big", "TP2MKF"), ("pg15-bigrel", "big", "TP2ML7")]


def mount_listing(root: Path) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            mode = f"{stat.S_IMODE(st.st_mode):04o}"
            if stat.S_ISDIR(st.st_mode):
                rows[rel] = ("d", mode, "-", "-")
            elif stat.S_ISLNK(st.st_mode):
                rows[rel] = ("l", mode, "-", os.readlink(full))
            else:
                h = hashlib.sha256()
                with open(full, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                rows[rel] = ("f", mode, str(st.st_size), h.hexdigest())
    return rows


def check_backup(fixtures_dir: Path, work: Path, fixture: str, instance: str,
                 backup_id: str, store: str | None = None, extra: tuple[str, ...] = ()
                 ) -> None:
    """Mount from the fixture's catalog, or from `store` (the same catalog elsewhere, e.g.
    in an object store), and compare with restore's tree and query results."""
    base = fixtures_dir / fixture
    catalog = base / "catalog"
    before = tree_state(catalog)
    view = open_view(store or catalog, instance, backup_id)
    tablespaces = dict(view.tablespaces)
    stored_auto = view.read("postgresql.auto.conf", 0, 1 << 20)
    view.close()
    expected = read_tsv(base / "expected" / instance / f"{backup_id}.tsv")
    queries = json.loads((base / "expected" / instance / f"{backup_id}.queries.json").read_text())
    mnt = make_owned_dir(work / "mnt", 0o700)  # owned by postgres: files appear as postgres'
    with mounted(mnt, work / "diff", store=store or catalog, instance=instance,
                 backup_id=backup_id, extra=extra):
        st = os.stat(mnt)
        assert stat.S_IMODE(st.st_mode) == 0o700
        listing = mount_listing(mnt)

        def auto_conf(actual: Row, _expected: Row) -> None:
            content = (mnt / "postgresql.auto.conf").read_bytes()
            assert content.startswith(stored_auto)
            assert b"allow_in_place_tablespaces = 'on'" in content
            assert b"archive_mode = 'off'" in content

        problems = compare_listing(listing, expected, tablespaces, auto_conf)
        assert not problems, "\n".join(problems[:40])
        with PgCluster(mnt, free_port(), work / "sock") as pg:
            pg.start()
            got = run_queries(pg, queries["sql"], queries.get("no_generic_md5", []),
                              queries.get("rowmd5_tables", []))
            pg.stop()
            log = pg.log_tail(200_000)
        assert "consistent recovery state reached" in log
        for key in ("server", "tablespaces", "databases"):
            assert got[key] == queries[key], key
    assert tree_state(catalog) == before, "the catalog was written to"


@pytest.mark.parametrize(("fixture", "instance", "backup_id"), SMALL)
def test_fixture_backup_mounts_like_restore(fixtures_dir: Path, work: Path, fixture: str,
                                            instance: str, backup_id: str) -> None:
    check_backup(fixtures_dir, work, fixture, instance, backup_id)


@pytest.mark.slow
@pytest.mark.parametrize(("fixture", "instance", "backup_id"), BIG)
def test_bigrel_backup_mounts_like_restore(fixtures_dir: Path, work: Path, fixture: str,
                                           instance: str, backup_id: str) -> None:
    check_backup(fixtures_dir, work, fixture, instance, backup_id)
