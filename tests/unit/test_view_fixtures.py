"""The logical view reproduces, byte for byte, what `pg_probackup restore` wrote for every
backup of the real fixture catalogs (modulo the files restore writes itself)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pbkfs.view import open_view
from pbkfs.view.chainview import ChainView
from pbkfs.view.export import iter_content
from tests.support.expected import Row, compare_listing, read_tsv, sha256_chunks

SMALL = [
    ("pg15", "main", "TP2KB6"), ("pg15", "main", "TP2KBJ"), ("pg15", "main", "TP2KBV"),
    ("pg15", "main", "TP2KC3"), ("pg15", "main", "TP2KCC"), ("pg15", "nochk", "TP2KCQ"),
    ("pg15", "nochk", "TP2KD0"), ("pg15-archive", "arch", "TP2MRO"),
    ("pg15-archive", "arch", "TP2MRQ"), ("pg15-archive", "arch", "TP2MRW"),
]
BIG = [("pg15-bigrel", "big", "TP2MKF"), ("pg15-bigrel", "big", "TP2ML7")]


def listing(view: ChainView) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for e in view.entries():
        if e.kind == "d":
            rows[e.path] = ("d", f"{e.mode:04o}", "-", "-")
        elif e.kind == "l":
            rows[e.path] = ("l", f"{e.mode:04o}", "-", e.target)
        else:
            rows[e.path] = ("f", f"{e.mode:04o}", str(e.size), sha256_chunks(iter_content(view, e)))
    return rows


def auto_conf_check(actual: Row, expected: Row) -> None:
    # restore appends its own comment (and recovery settings for archive backups) to the
    # filtered stored content; the view serves the filtered content itself.
    assert actual[0] == "f" and actual[1] == "0600"
    assert int(actual[2]) < int(expected[2])


def check_backup(fixtures_dir: Path, fixture: str, instance: str, backup_id: str) -> None:
    base = fixtures_dir / fixture
    view = open_view(base / "catalog", instance, backup_id)
    try:
        expected = read_tsv(base / "expected" / instance / f"{backup_id}.tsv")
        problems = compare_listing(listing(view), expected, view.tablespaces, auto_conf_check)
    finally:
        view.close()
    assert not problems, "\n".join(problems[:40])


@pytest.mark.parametrize(("fixture", "instance", "backup_id"), SMALL)
def test_view_matches_restore(fixtures_dir: Path, fixture: str, instance: str,
                              backup_id: str) -> None:
    check_backup(fixtures_dir, fixture, instance, backup_id)


@pytest.mark.slow
@pytest.mark.parametrize(("fixture", "instance", "backup_id"), BIG)
def test_bigrel_view_matches_restore(fixtures_dir: Path, fixture: str, instance: str,
                                     backup_id: str) -> None:
    check_backup(fixtures_dir, fixture, instance, backup_id)


def test_auto_conf_is_the_filtered_stored_copy(fixtures_dir: Path) -> None:
    view = open_view(fixtures_dir / "pg15" / "catalog", "main", "TP2KC3")
    stored = (fixtures_dir / "pg15/catalog/backups/main/TP2KB6/database/postgresql.auto.conf")
    entry = view.entry("postgresql.auto.conf")
    assert entry is not None
    # every backup's copy is the initdb default: 88 bytes, no recovery lines to drop
    assert view.read("postgresql.auto.conf", 0, 1000) == stored.read_bytes()
    assert entry.size == 88


def test_hidden_files_and_tablespace(fixtures_dir: Path) -> None:
    view = open_view(fixtures_dir / "pg15" / "catalog", "main", "TP2KBJ")
    assert view.entry("tablespace_map") is None
    assert view.entry("database_map") is None
    ts = view.entry("pg_tblspc/16384")
    assert ts is not None and ts.kind == "d"
    assert view.tablespaces == {"pg_tblspc/16384": "/tmp/pbkfs-fixture-src/pg15/main/tblspc_ts1"}
    assert "PG_15_202209061" in view.listdir("pg_tblspc/16384")


def test_a_chain_of_ptrack_incrementals_reads_like_restore(fixtures_dir: Path,
                                                           tmp_path: Path) -> None:
    """PTRACK backups store their pages exactly as DELTA and PAGE ones do (only the way the
    block set was found differs): the pg15 chain with every incremental labelled PTRACK
    reads the bytes restore wrote for TP2KC3, and its chain names the mode."""
    from pbkfs.catalog.chain import resolve_chain
    from pbkfs.catalog.store import Store
    from tests.support.catalog_edit import copy_catalog, set_control

    catalog = copy_catalog(fixtures_dir / "pg15" / "catalog", tmp_path / "catalog")
    for backup_id in ("TP2KBJ", "TP2KBV", "TP2KC3"):
        set_control(catalog / "backups" / "main" / backup_id, "backup-mode", "PTRACK")
    chain = resolve_chain(Store(catalog).instance("main"), "TP2KC3")
    assert sorted(b.control.backup_mode for b in chain) == [
        "FULL", "PTRACK", "PTRACK", "PTRACK"]
    view = open_view(catalog, "main", "TP2KC3")
    try:
        expected = read_tsv(fixtures_dir / "pg15" / "expected" / "main" / "TP2KC3.tsv")
        problems = compare_listing(listing(view), expected, view.tablespaces, auto_conf_check)
    finally:
        view.close()
    assert not problems, "\n".join(problems[:40])
