"""What a mount of an object-store catalog fetches at start: global/ and the system
catalogs' main forks of every chain member with their regions of the page index (not
the whole index); never user relations or other forks."""

from __future__ import annotations

import re
from pathlib import Path

from pbkfs.view import open_view
from pbkfs.view.prefetch import startup_objects


def test_startup_objects_are_indexes_global_and_system_catalogs(fixtures_dir: Path) -> None:
    view = open_view(fixtures_dir / "pg15" / "catalog", "main", "TP2KC3")
    try:
        fetches = startup_objects(view)
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
            assert rel.startswith("global/") or re.fullmatch(r"base/\d+/\d+", rel), rel
            if rel.startswith("base/"):
                assert int(rel.rsplit("/", 1)[1]) < 16384, rel
        assert len(set(objects)) == len(objects)
        members = {m.id for m in view.chain}
        assert {p.split("/backups/main/")[1].split("/")[0] for p in rest} <= members
    finally:
        view.close()
