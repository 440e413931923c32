"""Damaged catalogs give a specific error naming the file (and block), a non-zero exit from
`pbkfs verify`, and never wrong bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from pbkfs.catalog.headermap import INLINE_HEADER, read_region
from pbkfs.cli.main import cli
from pbkfs.errors import ChainError, CorruptionError, ParseError
from pbkfs.view import open_view
from tests.support.catalog_edit import copy_catalog, first_stored_datafile, rewrite_content


@pytest.fixture
def catalog(fixtures_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the pg15 catalog."""
    return copy_catalog(fixtures_dir / "pg15" / "catalog", tmp_path / "catalog")


def run_verify(catalog: Path, instance: str, backup_id: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli, ["verify", "-B", str(catalog), "--instance", instance, "-i", backup_id, "-j", "2"])
    return result.exit_code, result.output


def page_offset(catalog: Path, backup_id: str, path: str, record: int) -> tuple[int, int, int]:
    """(payload offset, payload length, block) of one stored page of a file."""
    from pbkfs.catalog.store import Store

    backup = Store(catalog).instance("main").backup(backup_id)
    entry = backup.pgdata_entries[path]
    index = read_region(backup.page_header_map, entry, 8192)
    start, length = index.record(record)
    return start, length, index.blocks[record]


@pytest.mark.parametrize("backup_id", ["TP2KB6", "TP2KBJ", "TP2KBV"])  # none, zlib, pglz
def test_flipped_byte_in_page_is_caught(catalog: Path, backup_id: str) -> None:
    bdir = catalog / "backups" / "main" / backup_id
    path, _ = first_stored_datafile(bdir, min_headers=2)
    start, length, block = page_offset(catalog, backup_id, path, 1)
    stored = bdir / "database" / path
    data = bytearray(stored.read_bytes())
    data[start + length // 2] ^= 0x5A
    stored.write_bytes(bytes(data))

    view = open_view(catalog, "main", backup_id)
    with pytest.raises(CorruptionError) as err:
        view.read_block(path, block)
    assert err.value.path == path and err.value.block == block
    assert err.value.backup_id == backup_id
    code, out = run_verify(catalog, "main", backup_id)
    assert code == 1
    assert f"{path}, block {block}" in out and "CRC mismatch" in out


def test_truncated_data_file(catalog: Path) -> None:
    bdir = catalog / "backups" / "main" / "TP2KBJ"
    path, fields = first_stored_datafile(bdir, min_headers=2)
    stored = bdir / "database" / path
    os.truncate(stored, int(fields["size"]) - 100)
    view = open_view(catalog, "main", "TP2KBJ")
    with pytest.raises(CorruptionError, match="listed as"):
        view.read(path, 0, view.block_count(path) * 8192)
    code, out = run_verify(catalog, "main", "TP2KBJ")
    assert code == 1 and path in out and "listed as" in out


def test_missing_parent(catalog: Path) -> None:
    import shutil

    shutil.rmtree(catalog / "backups" / "main" / "TP2KBJ")
    with pytest.raises(ChainError, match="parent backup TP2KBJ of TP2KBV is missing"):
        open_view(catalog, "main", "TP2KC3")
    code, out = run_verify(catalog, "main", "TP2KC3")
    assert code == 1 and "TP2KBJ" in out and "broken chain" in out


def test_garbled_content_line_fails_content_crc(catalog: Path) -> None:
    content = catalog / "backups" / "main" / "TP2KBJ" / "backup_content.control"
    data = content.read_bytes()
    content.write_bytes(data.replace(b'"size":"', b'"size";"', 1))
    with pytest.raises(CorruptionError, match="content CRC mismatch"):
        open_view(catalog, "main", "TP2KBJ")
    code, out = run_verify(catalog, "main", "TP2KBJ")
    assert code == 1 and "backup_content.control" in out


def test_garbled_content_line_with_valid_crc(catalog: Path) -> None:
    bdir = catalog / "backups" / "main" / "TP2KBJ"
    rewrite_content(bdir, lambda lines: [lines[0].replace('", "', '" "', 1)] + lines[1:])
    with pytest.raises(ParseError) as err:
        open_view(catalog, "main", "TP2KBJ")
    assert err.value.line == 1 and "backup_content.control" in str(err.value)
    code, out = run_verify(catalog, "main", "TP2KBJ")
    assert code == 1 and "backup_content.control:1" in out and "malformed" in out


def test_bad_page_header_map_crc(catalog: Path) -> None:
    bdir = catalog / "backups" / "main" / "TP2KBJ"
    path, fields = first_stored_datafile(bdir)

    def edit(lines: list[str]) -> list[str]:
        bad = str((int(fields["hdr_crc"]) + 1) & 0xFFFFFFFF)
        return [ln.replace(f'"hdr_crc":"{fields["hdr_crc"]}"', f'"hdr_crc":"{bad}"')
                if f'"path":"{path}"' in ln else ln for ln in lines]

    rewrite_content(bdir, edit)
    view = open_view(catalog, "main", "TP2KBJ")
    with pytest.raises(CorruptionError, match="page header map CRC mismatch"):
        view.read(path, 0, 8192 * 4)
    code, out = run_verify(catalog, "main", "TP2KBJ")
    assert code == 1 and "page header map CRC mismatch" in out and path in out


def test_flipped_byte_in_page_header_map(catalog: Path) -> None:
    bdir = catalog / "backups" / "main" / "TP2KBJ"
    path, fields = first_stored_datafile(bdir)
    hmap = bdir / "page_header_map"
    data = bytearray(hmap.read_bytes())
    data[int(fields["hdr_off"]) + int(fields["hdr_size"]) // 2] ^= 0xFF
    Path(str(hmap)).write_bytes(bytes(data))
    view = open_view(catalog, "main", "TP2KBJ")
    with pytest.raises(CorruptionError, match="page header map"):
        view.read(path, 0, 8192)
    code, _ = run_verify(catalog, "main", "TP2KBJ")
    assert code == 1


@pytest.mark.parametrize("bad_path", ["../escape", "base/../../etc/passwd", "/etc/passwd",
                                      "base//5"])
def test_path_escaping_the_data_directory(catalog: Path, bad_path: str) -> None:
    bdir = catalog / "backups" / "main" / "TP2KB6"
    rewrite_content(bdir, lambda lines: [lines[0].replace(
        lines[0].split('"path":"')[1].split('"')[0], bad_path, 1)] + lines[1:])
    with pytest.raises(ParseError, match="escapes|absolute|normalized"):
        open_view(catalog, "main", "TP2KB6")
    code, out = run_verify(catalog, "main", "TP2KB6")
    assert code == 1 and bad_path in out


def test_inline_header_disagreeing_with_map(catalog: Path) -> None:
    bdir = catalog / "backups" / "main" / "TP2KB6"
    path, _ = first_stored_datafile(bdir, min_headers=2)
    start, _, block = page_offset(catalog, "TP2KB6", path, 1)
    stored = bdir / "database" / path
    data = bytearray(stored.read_bytes())
    head = start - INLINE_HEADER.size
    data[head : head + 4] = (block + 7).to_bytes(4, "little")
    stored.write_bytes(bytes(data))
    view = open_view(catalog, "main", "TP2KB6")
    with pytest.raises(CorruptionError, match="inline header"):
        view.read_block(path, block)


def test_non_ok_member_refused(catalog: Path) -> None:
    from tests.support.catalog_edit import set_control

    set_control(catalog / "backups" / "main" / "TP2KBJ", "status", "ERROR")
    with pytest.raises(ChainError, match="TP2KBJ has status ERROR"):
        open_view(catalog, "main", "TP2KBV")
    set_control(catalog / "backups" / "main" / "TP2KBJ", "status", "ORPHAN")
    with pytest.raises(ChainError, match="--force"):
        open_view(catalog, "main", "TP2KBV")
    assert open_view(catalog, "main", "TP2KBV", force=True).backup_id == "TP2KBV"


def test_catalog_never_written(fixtures_dir: Path, tmp_path: Path) -> None:
    """verify on a read-only copy works and leaves every byte and mtime as it was."""
    cat = copy_catalog(fixtures_dir / "pg15" / "catalog", tmp_path / "ro")
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in cat.rglob("*")}
    code, out = run_verify(cat, "nochk", "TP2KD0")
    assert code == 0, out
    after = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in cat.rglob("*")}
    assert before == after


def test_shadowed_page_map_region_is_still_checked(catalog: Path) -> None:
    """A parent's map region whose blocks newer backups all hold is never read by the view,
    but verify of the child still checks it, as pg_probackup validate does."""
    from pbkfs.catalog.store import Store

    store = Store(catalog)
    full = store.instance("main").backup("TP2KB6")
    child = store.instance("main").backup("TP2KBJ")
    # a file the FULL stores whose every block the DELTA re-stored
    victim = next(
        e for e in full.pgdata_entries.values()
        if e.n_headers and (c := child.pgdata_entries.get(e.path)) is not None
        and c.n_headers == e.n_headers == (c.n_blocks or 0))
    hmap = full.page_header_map
    data = bytearray(hmap.read_bytes())
    data[victim.hdr_off + victim.hdr_size // 2] ^= 0xFF
    Path(str(hmap)).write_bytes(bytes(data))
    view = open_view(catalog, "main", "TP2KBJ")
    entry = view.entry(victim.path)
    assert entry is not None
    view.read(victim.path, 0, entry.size)  # served from the DELTA: fine
    code, out = run_verify(catalog, "main", "TP2KBJ")
    assert code == 1 and f"backup TP2KB6: {victim.path}" in out and "page header map" in out
