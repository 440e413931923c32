"""`pbkfs archive-get` as PostgreSQL's restore_command: every real segment, missing and damaged
files, relative %p, atomic delivery, and never a write to the catalog."""

from __future__ import annotations

import os
import subprocess
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from pbkfs.cli.archive_get import EXIT_DAMAGED, EXIT_MISSING, archive_get
from tests.support.trees import tree_state
from tests.support.wal import archive_copy, gz, make_segment


def run_get(catalog: Path, name: str, dest: str, cwd: Path) -> tuple[int, str]:
    """archive-get with the server's calling convention: cwd = data directory, relative %p."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(archive_get, ["-B", str(catalog), "--instance", "arch",
                                                  f"--wal-file-path={dest}",
                                                  f"--wal-file-name={name}"])
    finally:
        os.chdir(old)
    return result.exit_code, result.output


def test_every_segment_of_the_real_archive(fixtures_dir: Path, datadir: Path) -> None:
    catalog = fixtures_dir / "pg15-archive" / "catalog"
    wal = catalog / "wal" / "arch"
    before = tree_state(catalog, follow_links=True)
    names = sorted(p.name[:-3] for p in wal.glob("*.gz"))
    assert len(names) == 12
    for name in names:
        code, out = run_get(catalog, name, "pg_wal/RECOVERYXLOG", datadir)
        assert code == 0, out
        assert f"delivered {name} from {name}.gz" in out
        zcat = subprocess.run(["zcat", str(wal / f"{name}.gz")], capture_output=True,
                              check=True).stdout
        got = (datadir / "pg_wal" / "RECOVERYXLOG").read_bytes()
        assert got == zcat and len(got) == 1 << 20
    assert sorted(os.listdir(datadir / "pg_wal")) == ["RECOVERYXLOG"]  # no temp files left
    assert tree_state(catalog, follow_links=True) == before


def test_backup_history_file_and_absolute_path(fixtures_dir: Path, datadir: Path) -> None:
    catalog = fixtures_dir / "pg15-archive" / "catalog"
    name = "000000010000000000000016.00000028.backup"
    dest = datadir / "x.backup"
    code, out = run_get(catalog, name, str(dest), Path("/"))
    assert code == 0, out
    assert dest.read_bytes() == (catalog / "wal" / "arch" / name).read_bytes()


def test_missing_files_exit_1(fixtures_dir: Path, datadir: Path) -> None:
    catalog = fixtures_dir / "pg15-archive" / "catalog"
    for name in ("000000010000000000000022", "00000002.history", "000000010000000000000015"):
        code, out = run_get(catalog, name, "pg_wal/RECOVERYXLOG", datadir)
        assert code == EXIT_MISSING, out
        assert f"{name}: not in the WAL archive" in out
    assert os.listdir(datadir / "pg_wal") == []


@pytest.mark.parametrize("damage", ["flipped", "truncated", "not-gzip", "other-segment",
                                    "wrong-timeline", "wrong-cluster", "short"])
def test_damaged_segment_exits_2_and_writes_nothing(fixtures_dir: Path, tmp_path: Path,
                                                    datadir: Path, damage: str) -> None:
    catalog = archive_copy(fixtures_dir, tmp_path / "cat")
    wal = catalog / "wal" / "arch"
    target = wal / "000000010000000000000017.gz"
    packed = target.read_bytes()
    raw = zlib.decompress(packed, wbits=31)
    if damage == "flipped":
        packed = packed[:2000] + bytes([packed[2000] ^ 0x55]) + packed[2001:]
    elif damage == "truncated":
        packed = packed[: len(packed) // 2]
    elif damage == "not-gzip":
        packed = raw[:4096]
    elif damage == "other-segment":
        packed = (wal / "000000010000000000000016.gz").read_bytes()
    elif damage == "wrong-timeline":
        packed = gz(make_segment(2, 0x17))
    elif damage == "wrong-cluster":
        packed = gz(make_segment(1, 0x17, sysid=42))
    else:
        packed = gz(raw[:-8192])
    target.write_bytes(packed)
    before = tree_state(catalog, follow_links=True)
    (datadir / "pg_wal" / "RECOVERYXLOG").write_bytes(b"previous content")
    code, out = run_get(catalog, "000000010000000000000017", "pg_wal/RECOVERYXLOG", datadir)
    assert code == EXIT_DAMAGED, out
    assert "000000010000000000000017" in out and "error" in out
    expected = {"flipped": "gzip|more than", "truncated": "gzip", "not-gzip": "gzip",
                "other-segment": "wrong segment content", "wrong-timeline": "timeline 2",
                "wrong-cluster": "another cluster", "short": "bytes, expected"}[damage]
    assert any(word in out for word in expected.split("|")), out
    # the previous file is untouched and nothing else appeared
    assert (datadir / "pg_wal" / "RECOVERYXLOG").read_bytes() == b"previous content"
    assert os.listdir(datadir / "pg_wal") == ["RECOVERYXLOG"]
    assert tree_state(catalog, follow_links=True) == before


def test_history_file_is_delivered_and_checked(fixtures_dir: Path, tmp_path: Path,
                                               datadir: Path) -> None:
    catalog = archive_copy(fixtures_dir, tmp_path / "cat")
    wal = catalog / "wal" / "arch"
    text = b"1\t0/1C000A0\tno recovery target specified\n"
    (wal / "00000002.history").write_bytes(text)
    code, out = run_get(catalog, "00000002.history", "pg_wal/RECOVERYHISTORY", datadir)
    assert code == 0 and (datadir / "pg_wal" / "RECOVERYHISTORY").read_bytes() == text
    (wal / "00000003.history").write_bytes(b"garbage\n")
    code, out = run_get(catalog, "00000003.history", "pg_wal/RECOVERYHISTORY", datadir)
    assert code == EXIT_DAMAGED and "00000003.history" in out


def test_destination_problems_and_bad_arguments(fixtures_dir: Path, datadir: Path) -> None:
    catalog = fixtures_dir / "pg15-archive" / "catalog"
    code, out = run_get(catalog, "000000010000000000000016", "no-such-dir/RECOVERYXLOG", datadir)
    assert code == EXIT_DAMAGED and "cannot create" in out
    code, out = run_get(catalog, "RECOVERYXLOG", "pg_wal/RECOVERYXLOG", datadir)
    assert code == EXIT_DAMAGED and "not a WAL segment" in out
    result = CliRunner().invoke(archive_get, ["-B", str(catalog), "--instance", "nope",
                                              "--wal-file-path=x", "--wal-file-name=y"])
    assert result.exit_code == EXIT_DAMAGED and "no instance 'nope'" in result.output
    result = CliRunner().invoke(archive_get, ["-B", str(catalog), "--instance", "arch"])
    assert result.exit_code == 2 and "--wal-file-path" in result.output
