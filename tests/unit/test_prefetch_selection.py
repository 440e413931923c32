"""What a mount of an object-store catalog fetches ahead: global/ at start, and per
database directory the main forks of the system catalogs a connection reads, keyed for the
first read of its relation map; each with its region of the page index (not the whole
index); never user relations, other forks, catalogs a connection does not read, or a file
past the size bound."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pbkfs.fs.namespace import Namespace
from pbkfs.mount.frontend import prefetch_on_connect
from pbkfs.view import open_view, prefetch
from pbkfs.view.prefetch import CONNECTION_CATALOGS, RELATION_MAP, startup_plan
from pbkfs.view.source import SourceSpec, open_source


def test_startup_objects_are_indexes_global_and_system_catalogs(fixtures_dir: Path) -> None:
    view = open_view(fixtures_dir / "pg15" / "catalog", "main", "TP2KC3")
    try:
        plan = startup_plan(view)
        fetches = plan.common + [f for fs in plan.databases.values() for f in fs]
        maps = {str(m.page_header_map): m for m in view.chain}
        regions = [f for f in fetches if str(f.location) in maps]
        assert regions and all(f.length > 0 for f in regions)  # parts of the index only
        for f in regions:
            member = maps[str(f.location)]
            listed = {(e.hdr_off, e.hdr_size) for e in member.pgdata_entries.values()
                      if e.n_headers > 0}
            assert (f.offset, f.length) in listed
        objects = [str(f) for f in fetches if str(f.location) not in maps]
        assert all(f.length == -1 for f in fetches if str(f.location) not in maps)
        rest = objects
        assert any(p.endswith("/database/global/pg_control") for p in rest)
        assert any(re.search(r"/database/base/\d+/1259$", p) for p in rest)  # pg_class
        for p in rest:
            rel = p.split("/database/", 1)[1]
            assert rel.startswith("global/") or re.fullmatch(
                r"(base|pg_tblspc/\d+/[^/]+)/\d+/\d+", rel), rel
            if not rel.startswith("global/"):
                assert int(rel.rsplit("/", 1)[1]) in CONNECTION_CATALOGS, rel
        assert len(set(objects)) == len(objects)
        members = {m.id for m in view.chain}
        assert {p.split("/backups/main/")[1].split("/")[0] for p in rest} <= members
    finally:
        view.close()


@pytest.mark.parametrize("backup_id", ["TP2KC3", "TP2KBV"])
def test_global_at_start_each_database_at_its_first_connection(fixtures_dir: Path,
                                                                backup_id: str) -> None:
    catalog = fixtures_dir / "pg15" / "catalog"
    view = open_view(catalog, "main", backup_id)
    try:
        plan = startup_plan(view)
    finally:
        view.close()
    common = [str(f.location).split("/database/", 1)[-1] for f in plan.common]
    assert any(p == "global/pg_control" for p in common)
    assert all(p.startswith("global/") or "/database/" not in p for p in common)
    assert {"base/1", "base/4", "base/5"} <= set(plan.databases)  # template1/0, postgres
    # A database made in a tablespace keeps its catalogs (and its map) there; one dropped
    # after an earlier backup of the chain is not fetched (TP2KC3 follows its DROP).
    in_tablespace = "pg_tblspc/16384/PG_15_202209061/16603"
    assert (in_tablespace in plan.databases) == (backup_id == "TP2KBV")
    for directory, fetches in plan.databases.items():
        stored = [str(f.location) for f in fetches if f.length < 0]
        assert stored and all(
            re.fullmatch(rf".*/database/{directory}/\d+", p) for p in stored), directory
    source = open_source(SourceSpec("catalog", store=str(catalog), instance="main",
                                    backup_id=backup_id))
    try:
        ns = Namespace(0, 0, 0)
        ns.load_entries(source.entries())
    finally:
        source.close()
    hooks = prefetch_on_connect(ns, plan)
    maps = {ns.resolve(f"{d}/{RELATION_MAP}").ino for d in plan.databases}
    assert set(hooks) == maps  # one per database, on its relation map's inode


def test_catalogs_a_connection_does_not_read_and_big_files_are_left_to_demand(
        fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    view = open_view(fixtures_dir / "pg15" / "catalog", "main", "TP2KC3")
    try:
        def stored(plan: prefetch.StartupPlan) -> dict[str, int]:
            return {str(f.location).split("/database/", 1)[1]: Path(str(f.location)).stat().st_size
                    for fs in [plan.common, *plan.databases.values()] for f in fs
                    if f.length < 0}

        everything = stored(startup_plan(view))
        assert "base/5/1249" in everything and "base/5/2608" not in everything  # pg_depend
        assert "base/5/2838" not in everything  # pg_rewrite's TOAST: views, not connections
        biggest = max(everything.values())
        monkeypatch.setattr(prefetch, "PREFETCH_MAX_BYTES", biggest - 1)
        bounded = stored(startup_plan(view))
        assert bounded and max(bounded.values()) < biggest
        assert set(bounded) == {p for p, n in everything.items() if n < biggest}
    finally:
        view.close()
