"""What a mount of an object-store catalog fetches at start: page indexes, global/ and the
system catalogs' main forks of every chain member; never user relations or other forks."""

from __future__ import annotations

import re
from pathlib import Path

from pbkfs.view import open_view
from pbkfs.view.prefetch import startup_objects


def test_startup_objects_are_indexes_global_and_system_catalogs(fixtures_dir: Path) -> None:
    view = open_view(fixtures_dir / "pg15" / "catalog", "main", "TP2KC3")
    try:
        objects = [str(o) for o in startup_objects(view)]
        maps = [str(m.page_header_map) for m in view.chain]
        assert objects[:len(maps)] == maps
        rest = objects[len(maps):]
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
