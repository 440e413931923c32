"""`pbkfs show --archive` against `pg_probackup show --archive` of the real catalogs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pbkfs.cli.show import show
from tests.support.wal import multi_timeline_archive


def blocks(text: str) -> dict[str, str]:
    """Per-instance blocks of the text output (instance order depends on directory order)."""
    out = {}
    for block in text.split("\nARCHIVE INSTANCE ")[1:]:
        out[block.split("'")[1]] = block
    return out


@pytest.mark.parametrize("fixture", ["pg15", "pg15-archive"])
def test_json_equals_pg_probackup(fixtures_dir: Path, fixture: str) -> None:
    base = fixtures_dir / fixture
    result = CliRunner().invoke(show, ["-B", str(base / "catalog"), "--archive",
                                       "--format", "json"])
    assert result.exit_code == 0, result.output
    ours = {i["instance"]: i for i in json.loads(result.output)}
    theirs = {i["instance"]: i for i in json.loads((base / "show-archive.json").read_text())}
    assert ours == theirs

    def keys(value: object) -> object:  # the key order, recursively
        if isinstance(value, dict):
            return [(k, keys(v)) for k, v in value.items()]
        if isinstance(value, list):
            return [keys(v) for v in value]
        return None

    assert {n: keys(v) for n, v in ours.items()} == {n: keys(v) for n, v in theirs.items()}


@pytest.mark.parametrize("fixture", ["pg15", "pg15-archive"])
def test_text_equals_pg_probackup(fixtures_dir: Path, fixture: str) -> None:
    base = fixtures_dir / fixture
    result = CliRunner().invoke(show, ["-B", str(base / "catalog"), "--archive"])
    assert result.exit_code == 0, result.output
    expected = (base / "show-archive.txt").read_text()
    assert result.output.startswith("\nARCHIVE INSTANCE '")
    assert blocks(result.output) == blocks(expected)
    assert len(result.output) == len(expected)


def test_one_instance(fixtures_dir: Path) -> None:
    catalog = fixtures_dir / "pg15" / "catalog"
    result = CliRunner().invoke(show, ["-B", str(catalog), "--archive", "--instance", "nochk",
                                       "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.output) == \
        [{"instance": "nochk", "timelines": []}]
    result = CliRunner().invoke(show, ["-B", str(catalog), "--archive", "--instance", "nope"])
    assert result.exit_code == 1 and "no instance 'nope'" in result.output


def test_gaps_and_timelines(fixtures_dir: Path, tmp_path: Path) -> None:
    store = multi_timeline_archive(fixtures_dir, tmp_path / "cat")
    result = CliRunner().invoke(show, ["-B", str(store.root), "--archive", "--format", "json"])
    assert result.exit_code == 0, result.output
    [inst] = json.loads(result.output)
    tl2, tl1 = inst["timelines"]  # newest first; timeline 3 holds no segment: not shown
    assert (tl2["tli"], tl2["parent-tli"], tl2["switchpoint"]) == (2, 1, "0/1C00000")
    assert (tl2["min-segno"], tl2["max-segno"], tl2["n-segments"]) == \
        ("00000002000000000000001C", "00000002000000000000001E", 3)
    assert tl2["closest-backup-id"] == "TP2MRQ" and tl2["backups"] == []
    assert tl1["status"] == "DEGRADED" and tl1["n-segments"] == 11
    assert tl1["lost-segments"] == [{"begin-segno": "000000010000000000000019",
                                     "end-segno": "000000010000000000000019"}]
    assert [b["id"] for b in tl1["backups"]] == ["TP2MRW", "TP2MRQ", "TP2MRO"]
    text = CliRunner().invoke(show, ["-B", str(store.root), "--archive"]).output
    lines = text.splitlines()
    assert lines[0] == "" and lines[1] == "ARCHIVE INSTANCE 'arch'"
    row2, row1 = lines[5].split(), lines[6].split()
    assert row2[:6] == ["2", "1", "0/1C00000", "00000002000000000000001C",
                        "00000002000000000000001E", "3"]
    assert row2[8:] == ["0", "OK"]
    assert row1[0] == "1" and row1[-2:] == ["3", "DEGRADED"]
    assert len({len(line) for line in lines[2:7]}) == 1  # one table width


def test_plain_show_is_unchanged(fixtures_dir: Path) -> None:
    catalog = fixtures_dir / "pg15-archive" / "catalog"
    result = CliRunner().invoke(show, ["-B", str(catalog)])
    assert result.exit_code == 0 and "BACKUP INSTANCE 'arch'" in result.output
    assert "ARCHIVE INSTANCE" not in result.output
