"""Unit tests for the catalog's small parsers and helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from pbkfs.catalog.content import check_relative_path, parse_content, parse_line
from pbkfs.catalog.control import parse_backup_control, parse_time, version_number
from pbkfs.catalog.ids import decode_id, encode_id
from pbkfs.catalog.keyvalue import parse_keyvalue
from pbkfs.catalog.lsn import format_lsn, parse_lsn, wal_segment_name
from pbkfs.cli.showinfo import pretty_size
from pbkfs.errors import CorruptionError, ParseError
from pbkfs.view.rewrite import parse_tablespace_map, strip_recovery_settings

W = Path("x/backup_content.control")


def test_keyvalue_quoting_and_keys() -> None:
    text = "#c\nBackup_Mode = FULL # comment\nnote = 'it''s # here'\n\nstream=true\n"
    assert parse_keyvalue(text, "f") == {"backup-mode": "FULL", "note": "it's # here",
                                         "stream": "true"}
    with pytest.raises(ParseError, match="unterminated"):
        parse_keyvalue("note = 'open\n", "f")
    with pytest.raises(ParseError, match="key = value"):
        parse_keyvalue("just words\n", "f")


def test_ids_lsns_versions() -> None:
    assert encode_id(decode_id("TP2KB6")) == "TP2KB6"
    assert decode_id("tp2kb6") == decode_id("TP2KB6")
    with pytest.raises(ValueError):
        decode_id("../x")
    assert parse_lsn("0/1A00028") == 0x1A00028
    assert format_lsn(0x1_0000_0028) == "1/28"
    with pytest.raises(ValueError):
        parse_lsn("nope")
    assert wal_segment_name(1, 0x2821DB0, 1 << 20) == "000000010000000000000028"
    assert wal_segment_name(1, 0x1_0000_0000, 16 << 20) == "000000010000000100000000"
    assert version_number("2.5.16") == 20516
    assert parse_time("2026-11-25 17:52:31+00").utcoffset() is not None
    offset = parse_time("2026-11-25 17:52:31+05:30").utcoffset()
    assert offset is not None and offset.total_seconds() == 19800


def test_content_line_fields() -> None:
    e = parse_line('{"path":"base/1/2", "size":"-1", "mode":"33152", "is_datafile":"1", '
                   '"is_cfs":"0", "crc":"0", "compress_alg":"none", "external_dir_num":"0", '
                   '"dbOid":"1","segno":"0","n_blocks":"4"}', W, 1)
    assert e.size == -1 and e.n_blocks == 4 and e.is_page_stream and e.full_size is None
    huge = parse_line('{"path":"a", "size":"99999999999999999999", "mode":"33188"}', W, 1)
    assert huge.size == -1  # too large for int64 reads as BYTES_INVALID
    with pytest.raises(ParseError, match="not an integer"):
        parse_line('{"path":"a", "size":"x", "mode":"33188"}', W, 3)
    with pytest.raises(ParseError, match="unsupported mode"):
        parse_line('{"path":"a", "size":"0", "mode":"4480"}', W, 3)  # a FIFO
    with pytest.raises(ParseError, match="listed twice"):
        parse_content(b'{"path":"a", "size":"0", "mode":"33188"}\n' * 2, W)
    with pytest.raises(CorruptionError, match="content CRC"):
        parse_content(b'{"path":"a", "size":"0", "mode":"33188"}\n', W, expected_crc=1)


def test_relative_path_rule() -> None:
    assert check_relative_path("base/5/16384") is None
    for bad in ("", "/abs", "a/../b", "a//b", "./a", "a/.", "a\0b"):
        assert check_relative_path(bad) is not None


def test_backup_control_errors(tmp_path: Path) -> None:
    p = tmp_path / "backup.control"
    p.write_text("backup-mode = FULL\nprogram-version = 2.5.16\nstart-time = '2026-01-01 "
                 "00:00:00+00'\nparent-backup-id = 'ABC'\n")
    with pytest.raises(ParseError, match="FULL backup names a parent"):
        parse_backup_control(p)
    p.write_text("backup-mode = SNAPSHOT\n")
    with pytest.raises(ParseError, match="unknown mode"):
        parse_backup_control(p)
    p.write_text("backup-mode = DELTA\nprogram-version = 2.5.16\nstart-time = '2026-01-01 "
                 "00:00:00+00'\nstart-lsn = zz\n")
    with pytest.raises(ParseError, match="start-lsn"):
        parse_backup_control(p)


def test_restore_rewrites() -> None:
    conf = (b"# Do not edit\nwork_mem = '4MB'\nrestore_command = 'x'\n"
            b"recovery_target_time = 'y'\ninclude 'probackup_recovery.conf'\nz = 1")
    assert strip_recovery_settings(conf) == b"# Do not edit\nwork_mem = '4MB'\nz = 1"
    assert parse_tablespace_map(b"16384 /a b/c\n\n16390 /d\n") == {"16384": "/a b/c",
                                                                    "16390": "/d"}


def test_pretty_size_matches_pg_probackup() -> None:
    assert [pretty_size(n) for n in (44059786, 6286346, 1048576, 488223, 100)] == [
        "42MB", "6139kB", "1024kB", "477kB", "100B"]


def test_link_targets_stay_inside() -> None:
    from pbkfs.catalog.content import check_link_target

    assert check_link_target("base/good", "../global") is None
    assert check_link_target("pg_tblspc/16384", "/srv/ts1") is None  # legacy tablespace link
    for path, target in (("evil", "/etc"), ("evil", "../x"), ("base/evil", "../../outside"),
                         ("pg_tblspc/1/x", "/etc"), ("a", "")):
        assert check_link_target(path, target) is not None
