"""The WAL archive reader on the real pg15/pg15-archive archives and on synthetic ones:
names, decompression, segment header checks, history files, timelines, gaps, coverage."""

from __future__ import annotations

import gzip
import struct
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lz4.frame
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbkfs.catalog.store import Store
from pbkfs.codecs.crc import crc32c
from pbkfs.errors import CatalogError, CorruptionError, ParseError, UsageError
from pbkfs.walarchive import WalArchive, WalNotFound, archive_timelines, coverage, parse_history
from pbkfs.walarchive.decompress import decompress
from pbkfs.walarchive.history import HistoryEntry, timeline_path
from pbkfs.walarchive.names import (
    BACKUP_HISTORY,
    HISTORY,
    PARTIAL,
    SEGMENT,
    TEMP,
    UNKNOWN,
    classify,
    parse_segment_name,
    requested_kind,
    segment_name,
)
from pbkfs.walarchive.records import iter_records, restore_point, xact_time
from pbkfs.walarchive.scan import last_xact_time, xact_times_between
from pbkfs.walarchive.segment import check_segment
from pbkfs.walarchive.timelines import backup_segments, contiguous_end, missing_in
from tests.support.wal import (
    PG15_MAGIC,
    SEG,
    SYSID,
    archive_copy,
    gz,
    make_segment,
    multi_timeline_archive,
)


def fixture_archive(fixtures_dir: Path) -> tuple[Store, WalArchive]:
    store = Store(fixtures_dir / "pg15-archive" / "catalog")
    return store, WalArchive.for_instance(store.instance("arch"))


# -- names --------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kind", "tli", "segno", "compression"), [
    ("000000010000000000000016", SEGMENT, 1, 0x16, "none"),
    ("000000010000000000000016.gz", SEGMENT, 1, 0x16, "gzip"),
    ("000000020000000100000003.lz4", SEGMENT, 2, 4096 + 3, "lz4"),
    ("0000000A0000000000000FFF.zst", SEGMENT, 10, 0xFFF, "zstd"),
    ("000000010000000000000021.partial", PARTIAL, 1, 0x21, "none"),
    ("000000010000000000000021.partial.gz", PARTIAL, 1, 0x21, "gzip"),
    ("00000002.history", HISTORY, 2, -1, "none"),
    ("00000002.history.gz", HISTORY, 2, -1, "gzip"),
    ("000000010000000000000016.00000028.backup", BACKUP_HISTORY, 1, 0x16, "none"),
    ("000000010000000000000016.part", TEMP, 0, -1, "none"),
    ("000000010000000000000016.gz.part", TEMP, 0, -1, "none"),
    ("000000010000000000000016.partial.part", TEMP, 0, -1, "none"),
    ("00000001000000000000001a", UNKNOWN, 0, -1, "none"),  # lower case: not PostgreSQL's
    ("000000010000000000001000", UNKNOWN, 0, -1, "none"),  # segment part >= 4096 at 1 MB
    ("000000000000000000000016", UNKNOWN, 0, -1, "none"),  # timeline 0
    ("000000010000000000000016.bz2", UNKNOWN, 0, -1, "none"),
    ("archive_status", UNKNOWN, 0, -1, "none"),
])
def test_classify(name: str, kind: str, tli: int, segno: int, compression: str) -> None:
    wal = classify(name, SEG)
    assert (wal.kind, wal.tli, wal.segno, wal.compression) == (kind, tli, segno, compression)


def test_requested_names() -> None:
    assert requested_kind("000000010000000000000016", SEG).kind == SEGMENT
    assert requested_kind("00000003.history", SEG).kind == HISTORY
    for bad in ("000000010000000000000016.gz", "../00000003.history", "", "x/y", "RECOVERYXLOG"):
        assert requested_kind(bad, SEG).kind == UNKNOWN


@given(st.integers(1, 0xFFFFFFFF), st.integers(0, (1 << 44) - 1),
       st.sampled_from([1 << 20, 16 << 20, 1 << 30]))
def test_segment_name_round_trip(tli: int, segno: int, seg_size: int) -> None:
    segno %= (1 << 64) // seg_size
    name = segment_name(tli, segno, seg_size)
    assert len(name) == 24 and parse_segment_name(name, seg_size) == (tli, segno)


# -- decompression ------------------------------------------------------------------------


def test_decompress_every_codec_and_bounds() -> None:
    data = make_segment(1, 5)
    assert decompress(gz(data), "gzip", SEG, "f") == data
    assert decompress(gz(data[:100]) + gz(data[100:]), "gzip", SEG, "f") == data  # 2 members
    assert decompress(lz4.frame.compress(data), "lz4", SEG, "f") == data
    assert decompress(zstandard.ZstdCompressor().compress(data), "zstd", SEG, "f") == data
    assert decompress(data, "none", SEG, "f") == data
    for codec, packed in (("gzip", gz(data)), ("lz4", lz4.frame.compress(data)),
                          ("zstd", zstandard.ZstdCompressor().compress(data))):
        with pytest.raises(CorruptionError, match="truncated|not a valid"):
            decompress(packed[: len(packed) // 2], codec, SEG, "f")
        with pytest.raises(CorruptionError, match="more than"):
            decompress(packed, codec, SEG - 1, "f")
        with pytest.raises(CorruptionError, match="not a valid|empty"):
            decompress(b"garbage!" * 8, codec, SEG, "f")


def test_decompress_gzip_damage_is_reported() -> None:
    packed = bytearray(gz(make_segment(1, 5)))
    packed[len(packed) // 2] ^= 0xFF
    with pytest.raises(CorruptionError, match="gzip|more than"):
        decompress(bytes(packed), "gzip", SEG, "x.gz")
    bad_crc = bytearray(gz(make_segment(1, 5)))
    bad_crc[-8] ^= 1  # CRC32 of the gzip trailer
    with pytest.raises(CorruptionError, match="gzip"):
        decompress(bytes(bad_crc), "gzip", SEG, "x.gz")


# -- segment header checks ----------------------------------------------------------------


def test_real_segments_pass_and_altered_ones_fail(fixtures_dir: Path) -> None:
    _, archive = fixture_archive(fixtures_dir)
    assert archive.magic == PG15_MAGIC and archive.system_identifier == SYSID
    raw = gzip.decompress((archive.dir / "00000001000000000000001E.gz").read_bytes())
    kw = dict(path="x", tli=1, segno=0x1E, seg_size=SEG, magic=PG15_MAGIC, system_identifier=SYSID)
    check_segment(raw, **kw)  # type: ignore[arg-type]
    cases = [
        (raw[:-1], "bytes, expected"),
        (raw + b"\0", "bytes, expected"),
        (struct.pack("<H", 0xD10D) + raw[2:], "magic"),
        (raw[:2] + struct.pack("<H", 0x0004) + raw[4:], "long page header"),
        (raw[:2] + struct.pack("<H", 0x0012) + raw[4:], "info bits"),
        (raw[:4] + struct.pack("<I", 2) + raw[8:], "timeline 2"),
        (raw[:24] + struct.pack("<Q", 1) + raw[32:], "another cluster"),
        (raw[:32] + struct.pack("<I", 1 << 24) + raw[36:], "segment size"),
        (raw[:36] + struct.pack("<I", 4096) + raw[40:], "block size"),
    ]
    for data, message in cases:
        with pytest.raises(CorruptionError, match=message):
            check_segment(data, **kw)  # type: ignore[arg-type]
    with pytest.raises(CorruptionError, match="wrong segment content"):
        check_segment(raw, **{**kw, "segno": 0x1F})  # type: ignore[arg-type]
    # a new timeline's first segment starts with its parent's pages
    check_segment(raw, **{**kw, "tli": 2})  # type: ignore[arg-type]
    check_segment(raw, **{**kw, "magic": None})  # type: ignore[arg-type]


def test_fetch_every_real_segment_equals_gunzip(fixtures_dir: Path) -> None:
    for fixture, instance in (("pg15-archive", "arch"), ("pg15", "main")):
        store = Store(fixtures_dir / fixture / "catalog")
        archive = WalArchive.for_instance(store.instance(instance))
        segments = [f for f in archive.files if f.wal.kind == SEGMENT]
        assert segments
        for f in segments:
            data, copy = archive.fetch(f.wal.base)
            assert copy.path == f.path
            assert data == zlib.decompress(f.path.read_bytes(), wbits=31)
        for f in archive.files:
            if f.wal.kind == BACKUP_HISTORY:
                data, _ = archive.fetch(f.wal.name)
                assert data.startswith(b"START WAL LOCATION")


def test_fetch_missing_and_bad_names(fixtures_dir: Path) -> None:
    _, archive = fixture_archive(fixtures_dir)
    with pytest.raises(WalNotFound, match="not in the WAL archive"):
        archive.fetch("000000010000000000000022")
    with pytest.raises(WalNotFound):
        archive.fetch("00000002.history")
    with pytest.raises(UsageError, match="not a WAL"):
        archive.fetch("RECOVERYXLOG")
    assert archive.history(1) == [] and archive.history(2) is None


def test_fetch_prefers_a_valid_copy_and_reports_all_bad_ones(fixtures_dir: Path,
                                                             tmp_path: Path) -> None:
    catalog = archive_copy(fixtures_dir, tmp_path / "cat")
    wal = catalog / "wal" / "arch"
    archive = WalArchive.for_instance(Store(catalog).instance("arch"))
    good = zlib.decompress((wal / "000000010000000000000017.gz").read_bytes(), wbits=31)
    (wal / "000000010000000000000017").write_bytes(good[:1000])  # truncated plain copy
    data, copy = archive.fetch("000000010000000000000017")
    assert data == good and copy.path.name.endswith(".gz")
    (wal / "000000010000000000000017.gz").write_bytes(b"\x1f\x8b broken")
    with pytest.raises(CorruptionError) as info:
        archive.fetch("000000010000000000000017")
    assert "no valid copy" in str(info.value) and "1000 bytes" in str(info.value) \
        and "gzip" in str(info.value)
    # a partial segment is the last resort for a segment name
    (wal / "000000010000000000000022.partial").write_bytes(make_segment(1, 0x22))
    data, copy = archive.fetch("000000010000000000000022")
    assert copy.wal.kind == PARTIAL and data == make_segment(1, 0x22)


# -- history files ------------------------------------------------------------------------


def test_parse_history() -> None:
    text = ("1\t0/1C000A0\tno recovery target specified\n\n# comment\n"
            "2\t1/0\tbefore 2026-11-25 18:45:40+00\n")
    entries = parse_history(text, 3)
    assert entries == [HistoryEntry(1, 0x1C000A0, "no recovery target specified"),
                       HistoryEntry(2, 1 << 32, "before 2026-11-25 18:45:40+00")]
    assert timeline_path(entries, 3) == [(1, 0, 0x1C000A0), (2, 0x1C000A0, 1 << 32),
                                         (3, 1 << 32, None)]
    assert parse_history("", 2) == []
    for bad, message in (("x\t0/1\n", "not '<timeline>"), ("2\t0/1\n1\t0/2\n", "increasing"),
                         ("1\t0/5\n2\t0/4\n", "decrease"), ("3\t0/5\n", "not below")):
        with pytest.raises(ParseError, match=message):
            parse_history(bad, 3)


# -- timelines, gaps, coverage ------------------------------------------------------------


def test_timelines_of_the_real_archive(fixtures_dir: Path) -> None:
    store, archive = fixture_archive(fixtures_dir)
    [tl] = archive_timelines(archive, store.instance("arch"))
    assert (tl.tli, tl.parent_tli, tl.switchpoint, tl.n_segments) == (1, 0, 0, 12)
    assert (tl.begin_segno, tl.end_segno, tl.lost, tl.status) == (0x16, 0x21, [], "OK")
    assert tl.size == sum(f.size for f in archive.files if f.wal.kind == SEGMENT)
    assert [b.id for b in tl.backups] == ["TP2MRW", "TP2MRQ", "TP2MRO"]
    assert tl.closest_backup is None


def test_timelines_with_gap_fork_and_closest_backup(fixtures_dir: Path, tmp_path: Path) -> None:
    store = multi_timeline_archive(fixtures_dir, tmp_path / "cat")
    instance = store.instance("arch")
    archive = WalArchive.for_instance(instance)
    tl1, tl2, tl3 = archive_timelines(archive, instance)
    assert tl1.n_segments == 11 and tl1.status == "DEGRADED"
    assert [(r.begin, r.end) for r in tl1.lost] == [(0x19, 0x19)]
    assert tl1.partial_segnos == [0x22]
    assert (tl2.parent_tli, tl2.switchpoint, tl2.begin_segno, tl2.end_segno) == \
        (1, 0x1C00000, 0x1C, 0x1E)
    assert tl2.parent is tl1 and tl2.backups == [] and tl2.status == "OK"
    # the valid backup of timeline 1 that stopped last before 0/1C00000
    assert tl2.closest_backup is not None and tl2.closest_backup.id == "TP2MRQ"
    assert tl3.n_segments == 0 and tl3.parent is tl2
    assert tl3.closest_backup is not None and tl3.closest_backup.id == "TP2MRQ"
    assert archive.newest_timeline() == 3
    assert archive.history(3) == [HistoryEntry(1, 0x1C00000, "x"), HistoryEntry(2, 0x1E80000, "y")]


def test_coverage_and_missing_segments(fixtures_dir: Path, tmp_path: Path) -> None:
    store = multi_timeline_archive(fixtures_dir, tmp_path / "cat")
    instance = store.instance("arch")
    archive = WalArchive.for_instance(instance)
    full, page, delta = (instance.backup(i) for i in ("TP2MRO", "TP2MRQ", "TP2MRW"))
    cov = coverage(archive, full)
    assert cov.consistent and (cov.needed.begin, cov.needed.end) == (0x16, 0x17)
    assert cov.reachable_end == 0x18  # 19 is lost
    assert coverage(archive, delta).reachable_end == 0x22  # the partial counts as the last one
    Path(str(archive.dir / "00000001000000000000001B.gz")).unlink()
    archive = WalArchive.for_instance(instance)
    cov = coverage(archive, page)
    assert not cov.consistent and cov.missing == ["00000001000000000000001B"]
    assert missing_in(archive, backup_segments(page, SEG)) == ["00000001000000000000001B"]
    assert contiguous_end(archive, 1, 0x1B) is None and contiguous_end(archive, 2, 0x1C) == 0x1E


def test_stream_backups_need_nothing_from_the_archive(fixtures_dir: Path) -> None:
    store = Store(fixtures_dir / "pg15" / "catalog")
    instance = store.instance("nochk")
    archive = WalArchive.for_instance(instance)
    assert archive.files == []  # nochk has no archive directory at all
    for backup in instance.newest_first():
        cov = coverage(archive, backup)
        assert cov.consistent and cov.reachable_end == cov.needed.end
    main = store.instance("main")
    archive = WalArchive.for_instance(main)
    cov = coverage(archive, main.backup("TP2KB6"))
    assert cov.missing == [] and cov.reachable_end == 0x2B


def test_archive_path_that_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file-not-dir").write_text("x")
    archive = WalArchive(tmp_path / "file-not-dir", SEG)
    with pytest.raises(CatalogError, match="cannot list WAL archive"):
        _ = archive.files


# -- WAL records: transaction times and restore points ----------------------------------


def wal_record(rmid: int, info: int, main: bytes, xid: int = 0) -> bytes:
    """One WAL record with only main data, its CRC computed as PostgreSQL does."""
    if len(main) < 256:
        body = bytes([255, len(main)]) + main
    else:
        body = bytes([254]) + struct.pack("<I", len(main)) + main
    head = struct.pack("<IIQBB2x", 24 + len(body), xid, 0, info, rmid)
    return head + struct.pack("<I", crc32c(head, crc32c(body))) + body


def build_segment(records: list[bytes], segno: int, tli: int = 1) -> bytes:
    """A segment holding `records` from its start, pages and continuation headers included."""
    payload = bytearray()
    spans = []
    for rec in records:
        spans.append((len(payload), len(payload) + len(rec)))
        payload += rec + bytes(-len(rec) % 8)
    out = bytearray()
    pos = 0
    page = 0
    while pos < len(payload):
        long = page == 0
        cont = next((e - pos for s, e in spans if s < pos < e), 0)
        info = (0x0002 if long else 0) | (0x0001 if cont else 0)
        header = struct.pack("<HHIQI4x", PG15_MAGIC, info, tli, segno * SEG + page * 8192, cont)
        if long:
            header += struct.pack("<QII", SYSID, SEG, 8192)
        room = 8192 - len(header)
        out += header + payload[pos:pos + room]
        out += bytes(-len(out) % 8192)
        pos += room
        page += 1
    return bytes(out) + bytes(SEG - len(out))


def pg_micros(when: datetime) -> int:
    return (when - datetime(2000, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def test_records_of_a_synthetic_segment() -> None:
    t1 = datetime(2026, 11, 25, 14, 5, 0, 250000, tzinfo=UTC)
    t2 = t1 + timedelta(seconds=3)
    records = [
        wal_record(10, 0x00, b"h" * 10000, xid=700),  # spans two page boundaries
        wal_record(0, 0x70, struct.pack("<q", pg_micros(t1)) + b"before deploy".ljust(64, b"\0")),
        wal_record(1, 0x00, struct.pack("<q", pg_micros(t2)) + b"\0" * 8, xid=700),
        wal_record(1, 0x20, struct.pack("<q", pg_micros(t2) + 5), xid=701),  # abort
    ]
    seg = build_segment(records, 0x30)
    check_segment(seg, path="x", tli=1, segno=0x30, seg_size=SEG, magic=PG15_MAGIC,
                  system_identifier=SYSID)
    got = list(iter_records([(0x30, seg)], SEG))
    assert [(r.rmid, r.info, r.xid) for r in got] == [(10, 0, 700), (0, 0x70, 0), (1, 0, 700),
                                                       (1, 0x20, 701)]
    assert got[0].lsn == 0x30 * SEG + 40 and len(got[0].main_data) == 10000
    assert got[1].lsn > 0x30 * SEG + 8192  # after the big record, past page headers
    assert restore_point(got[1]) == ("before deploy", t1)
    assert xact_time(got[2]) == t2 and xact_time(got[3]) == t2 + timedelta(microseconds=5)
    assert xact_time(got[1]) is None and restore_point(got[2]) is None
    # a record whose CRC is wrong ends the WAL there
    bad = bytearray(records[2])
    bad[-1] ^= 1
    got = list(iter_records([(0x30, build_segment(records[:2] + [bytes(bad)] + records[3:],
                                                  0x30))], SEG))
    assert len(got) == 2
    # a segment that does not follow the previous one is not read
    got = list(iter_records([(0x30, seg), (0x32, build_segment(records, 0x32))], SEG))
    assert len(got) == 4


def test_records_of_the_real_archive(fixtures_dir: Path) -> None:
    _, archive = fixture_archive(fixtures_dir)
    segments = [(s, archive.fetch(segment_name(1, s, SEG))[0]) for s in range(0x16, 0x22)]
    records = list(iter_records(segments, SEG))
    lsns = [r.lsn for r in records]
    assert len(records) > 10000 and lsns == sorted(set(lsns))
    ends = [(r.lsn, t) for r in records if (t := xact_time(r)) is not None]
    # what PostgreSQL logged replaying this archive: "redo done at 0/215FA58; last completed
    # transaction was at log time 2026-11-25 18:45:41.439275+00"
    assert ends[-1] == (0x215F9F0, datetime(2026, 11, 25, 18, 45, 41, 439275, tzinfo=UTC))
    assert records[-1].lsn == 0x215FA58
    # and recovering TP2MRW to its consistent point (0/1F22560): "... at log time
    # 2026-11-25 18:45:33.485246+00"
    assert max(t for lsn, t in ends if lsn < 0x1F22560) == \
        datetime(2026, 11, 25, 18, 45, 33, 485246, tzinfo=UTC)
    times = xact_times_between(archive, 1, 0x1E00028, 0x1F22560)
    assert len(times) == 26 and max(times) == datetime(2026, 11, 25, 18, 45, 33, 485246,
                                                         tzinfo=UTC)
    assert xact_times_between(archive, 1, 0x1A00028, 0x1B000B8) == []
    route = [(1, s) for s in range(0x1E, 0x22)]
    assert last_xact_time(archive, route) == (
        datetime(2026, 11, 25, 18, 45, 41, 439275, tzinfo=UTC), "000000010000000000000021")
    assert last_xact_time(archive, [(1, 0x16), (1, 0x17)]) is None  # no transaction there


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 3 * 8192 - 1), st.integers(1, 255)), max_size=12),
       st.integers(0, 2 * 8192))
def test_record_reader_never_fails_on_damaged_wal(fixtures_dir: Path,
                                                  flips: list[tuple[int, int]],
                                                  cut: int) -> None:
    """Damaged or truncated WAL ends the record stream; it never raises."""
    data = bytearray(_real_segment(fixtures_dir))
    for pos, xor in flips:
        data[pos] ^= xor
    segment = bytes(data[: len(data) - cut])
    records = list(iter_records([(0x1F, segment)], SEG))
    assert all(0x1F * SEG <= r.lsn < 0x20 * SEG for r in records)
    for r in records:
        xact_time(r)
        restore_point(r)


_SEGMENT_CACHE: dict[str, bytes] = {}


def _real_segment(fixtures_dir: Path) -> bytes:
    if "1F" not in _SEGMENT_CACHE:
        path = fixtures_dir / "pg15-archive" / "catalog" / "wal" / "arch" / \
            "00000001000000000000001F.gz"
        _SEGMENT_CACHE["1F"] = zlib.decompress(path.read_bytes(), wbits=31)
    return _SEGMENT_CACHE["1F"]
