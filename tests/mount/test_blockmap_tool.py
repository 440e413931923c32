"""The block-map inspector agrees with what a test wrote through a mount, live and offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from pbkfs.view import open_view
from tests.support.env import REPO
from tests.support.mounting import mounted

BS = 8192
TARGET = "TP2KBJ"  # DELTA on FULL TP2KB6: relations mix blocks of both
WRITTEN = {0: b"\x01", 2: b"\x02", 7: b"\x07"}  # block -> fill byte
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def inspector(*args: str, binary: bool = False) -> subprocess.CompletedProcess[Any]:
    proc = subprocess.run([sys.executable, "-m", "tools.blockmap", *args], cwd=REPO,
                          capture_output=True, text=not binary, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc


def report(*args: str) -> dict[str, Any]:
    return json.loads(inspector("--format", "json", *args).stdout)


def pick_relations(catalog: Path) -> tuple[str, str, str]:
    """Three datafiles of the target whose blocks come from both backups (>= 10 blocks)."""
    view = open_view(catalog, "main", TARGET)
    try:
        found = []
        for e in view.entries():
            if e.is_datafile and e.size >= 10 * BS:
                src = view.block_sources(e.path)
                rest = {x for b, x in enumerate(src) if b not in WRITTEN}
                if {"TP2KB6", TARGET} <= rest and len(src) <= 400:
                    found.append(e.path)
            if len(found) == 3:
                return found[0], found[1], found[2]
    finally:
        view.close()
    raise AssertionError("no mixed relations in the fixture")


def expected(catalog: Path, rel: str, size_blocks: int, diff_blocks: set[int],
             horizon: int | None = None) -> list[str]:
    view = open_view(catalog, "main", TARGET)
    try:
        base = view.block_sources(rel)
    finally:
        view.close()
    out = []
    for b in range(size_blocks):
        if b in diff_blocks or (horizon is not None and b >= horizon):
            out.append("diff")
        else:
            out.append(base[b] or "zero")
    return out


def by_path(rep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in rep["files"]}


def check(rep: dict[str, Any], catalog: Path, rel: str, trunc: str, moved: str,
          n_rel: int) -> None:
    files = by_path(rep)
    f = files[rel]
    assert f["blocks"] == expected(catalog, rel, n_rel, set(WRITTEN))
    assert f["kind"] == "datafile" and f["fid"] is not None
    assert f["counts"]["diff"] == len(WRITTEN)
    assert {"TP2KB6", TARGET} <= set(f["counts"])  # the rest names both backups
    t = files[trunc]
    assert t["horizon"] == 2 and t["truncated"] is True
    assert len(t["blocks"]) == 5
    assert t["blocks"] == expected(catalog, trunc, 5, set(), horizon=2)
    m = files[moved + ".renamed"]
    assert m["renamed_from"] == moved and m["fid"] is None
    assert "diff" not in m["counts"]
    wo = {w["path"]: w for w in rep["whiteouts"]}
    assert wo[moved]["renamed_to"] == [moved + ".renamed"]
    s = rep["summary"]
    assert s["files"] == 3 and s["renamed"] == 1 and s["truncated"] == 1 and s["whiteouts"] == 1
    assert s["counts"]["diff"] == len(WRITTEN) + 3  # 3 blocks past the truncation horizon


def test_inspector_live_and_offline(work: Path, fixtures_dir: Path) -> None:
    catalog = fixtures_dir / "pg15" / "catalog"
    rel, trunc, moved = pick_relations(catalog)
    mnt, diff = work / "mnt", work / "diff"
    args = ("base", )  # everything of interest lives under base/
    names = [rel, trunc, moved + ".renamed"]
    with mounted(mnt, diff, store=catalog, instance="main", backup_id=TARGET):
        n_rel = os.stat(mnt / rel).st_size // BS
        fd = os.open(mnt / rel, os.O_RDWR)
        try:
            for b, fill in WRITTEN.items():
                os.pwrite(fd, fill * BS, b * BS)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.truncate(mnt / trunc, 2 * BS)  # hides backup blocks 2.. for good
        os.truncate(mnt / trunc, 5 * BS - 100)  # re-extended: blocks 2..4 are the diff's
        os.rename(mnt / moved, mnt / (moved + ".renamed"))
        for p in (rel, trunc):
            fd = os.open(mnt / p, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)

        live = report("--mount", str(mnt), *names, moved)
        assert live["mode"] == "live" and live["diff"] == str(diff)
        check(live, catalog, rel, trunc, moved, n_rel)
        assert by_path(live)[rel]["map"] == "shm"  # from the workers' shared memory

        everything = report("--mount", str(mnt), *args)
        assert by_path(everything)[rel]["blocks"] == by_path(live)[rel]["blocks"]

        svg = work / "map.svg"
        inspector("--mount", str(mnt), "--format", "svg", "-o", str(svg), *names)
        root = ET.parse(svg).getroot()
        assert root.tag.endswith("svg")
        assert any(rel in (t.text or "") for t in root.iter("{http://www.w3.org/2000/svg}text"))
        png = work / "map.png"
        inspector("--mount", str(mnt), "--format", "png", "-o", str(png), *names)
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 200
        text = inspector("--mount", str(mnt), rel).stdout
        assert rel in text and "diff" in text and "summary:" in text

    offline = report("--diff", str(diff), *names, moved)
    assert offline["mode"] == "offline"
    check(offline, catalog, rel, trunc, moved, n_rel)
    assert by_path(offline)[rel]["map"] == "disk"
    png = inspector("--diff", str(diff), "--format", "png", rel, binary=True).stdout
    assert png.startswith(PNG_MAGIC)
