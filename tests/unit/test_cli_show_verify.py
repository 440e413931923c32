"""`pbkfs show` and `pbkfs verify` on the real catalogs (in process; as a program: tests/core/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pbkfs.cli.main import cli

SETS = ["pg15", "pg15-archive", "pg15-bigrel"]


@pytest.mark.parametrize("fixture", SETS)
def test_show_json_equals_pg_probackup(fixtures_dir: Path, fixture: str) -> None:
    base = fixtures_dir / fixture
    result = CliRunner().invoke(cli, ["show", "-B", str(base / "catalog"), "--format", "json"])
    assert result.exit_code == 0, result.output
    ours = {i["instance"]: i["backups"] for i in json.loads(result.output)}
    theirs = {i["instance"]: i["backups"] for i in json.loads((base / "show.json").read_text())}
    assert set(ours) == set(theirs)
    for name, backups in theirs.items():
        assert ours[name] == backups  # same records, same values, newest first
        assert [list(b) for b in ours[name]] == [list(b) for b in backups]  # same key order


def test_show_text_has_table_and_chains(fixtures_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["show", "-B", str(fixtures_dir / "pg15" / "catalog"),
                                      "--instance", "main"])
    assert result.exit_code == 0
    assert "BACKUP INSTANCE 'main'" in result.output
    assert "TP2KB6 <- TP2KBJ <- TP2KBV <- TP2KC3" in result.output
    assert "nochk" not in result.output
    line = next(ln for ln in result.output.splitlines() if ln.split()[2:3] == ["TP2KBJ"])
    for cell in ("DELTA", "STREAM", "6139kB", "3.15", "0/2000028", "OK"):
        assert cell in line


def test_backup_path_from_environment(fixtures_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["show", "--format", "json"],
                                env={"BACKUP_PATH": str(fixtures_dir / "pg15" / "catalog")})
    assert result.exit_code == 0 and "TP2KCC" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["show", "-B", "/nonexistent/catalog"], "backup catalog does not exist"),
    (["show", "-B", "{pg15}", "--instance", "nope"], "no instance 'nope'"),
    (["verify", "-B", "{pg15}", "--instance", "main", "-i", "ZZZZZZ"], "no backup 'ZZZZZZ'"),
    (["verify", "-B", "{pg15}", "--instance", "main", "-i", "TP2KB6", "-j", "0"], "-j"),
])
def test_bad_arguments(fixtures_dir: Path, args: list[str], message: str) -> None:
    args = [a.replace("{pg15}", str(fixtures_dir / "pg15" / "catalog")) for a in args]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert message in result.output


@pytest.mark.slow
def test_verify_bigrel(fixtures_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["verify", "-B", str(fixtures_dir / "pg15-bigrel" /
                                                           "catalog"), "--instance", "big",
                                      "-i", "TP2ML7", "-j", "2"])
    assert result.exit_code == 0, result.output


def test_help_everywhere() -> None:
    for args in (["--help"], ["show", "--help"], ["verify", "--help"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0 and "Usage" in result.output
