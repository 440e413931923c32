"""The writer's catalogs have the shape of pg_probackup 2.5.16's, field for field.

Every check here runs on the real catalog in the pg15 fixture set as well as on
a catalog that tools.mkbackup wrote for a live PostgreSQL 15, so a check that
describes pg_probackup wrongly fails on the fixture, not just on the writer.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pbkfs.catalog.lsn import parse_lsn
from pbkfs.codecs import pglz
from pbkfs.codecs._native import page_checksum
from pbkfs.codecs.crc import crc32c
from tests.support.postgres import (
    make_owned_dir,
    pg_workdir,
    require_postgres,
    running_cluster,
)
from tools.mkbackup.backup import BackupOptions, run_backup
from tools.mkbackup.instance import add_instance, init_catalog

BLCKSZ = 8192
S_IFMT = 0o170000
S_IFDIR = 0o040000
PAIR = re.compile(r'"([^"]*)":"([^"]*)"')
LINE = re.compile(r'^\{"path":"[^"]*"(, "[a-zA-Z_]+":"[^"]*"){8}(,"[a-zA-Z_]+":"[^"]*")*\}$')


# -- reading a catalog (deliberately independent of pbkfs.catalog) ---------------


def read_kv(path: Path) -> list[tuple[str, str]]:
    out = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, _, value = line.partition(" = ")
        out.append((key, value))
    return out


def skeleton(path: Path) -> list[str]:
    """Comment lines verbatim, blank lines, and the keys of key = value lines, in order."""
    out = []
    for line in path.read_text().splitlines():
        out.append(line if (not line or line.startswith("#")) else line.partition(" = ")[0])
    return out


@dataclass
class Entry:
    line: str
    fields: dict[str, str]
    keys: tuple[str, ...]

    @property
    def path(self) -> str:
        return self.fields["path"]

    @property
    def size(self) -> int:
        return int(self.fields["size"])

    @property
    def is_dir(self) -> bool:
        return int(self.fields["mode"]) & S_IFMT == S_IFDIR

    @property
    def is_datafile(self) -> bool:
        return self.fields["is_datafile"] == "1"

    def kind(self) -> str:
        if self.is_dir:
            return "dir"
        base = "data" if self.is_datafile else "file"
        state = "unchanged" if self.size == -1 else "empty" if self.size == 0 else "stored"
        return f"{base}-{state}"


def read_content(backup: Path) -> list[Entry]:
    out = []
    for line in (backup / "backup_content.control").read_text().splitlines():
        pairs = PAIR.findall(line)
        out.append(Entry(line, dict(pairs), tuple(k for k, _ in pairs)))
    return out


def map_records(backup: Path, e: Entry) -> list[tuple[int, int, int, int]]:
    """(lsn, block, pos, checksum) of the n_headers + 1 page_header_map records of `e`."""
    raw_map = (backup / "page_header_map").read_bytes()
    off, size = int(e.fields["hdr_off"]), int(e.fields["hdr_size"])
    raw = zlib.decompress(raw_map[off:off + size])
    n = int(e.fields["n_headers"])
    assert len(raw) == (n + 1) * 24, e.path
    assert crc32c(raw) == int(e.fields["hdr_crc"]), e.path
    return [struct.unpack_from("<QiiH", raw, i * 24) for i in range(n + 1)]


def decode_pages(backup: Path, e: Entry) -> Iterator[tuple[int, bytes, int]]:
    """(block, page, record size) of every record of a stored datafile."""
    data = (backup / "database" / e.path).read_bytes()
    pos = 0
    while pos < len(data):
        block, csize = struct.unpack_from("<Ii", data, pos)
        payload = data[pos + 8:pos + 8 + csize]
        assert 0 < csize <= BLCKSZ and len(payload) == csize, e.path
        if csize == BLCKSZ:
            page = payload
        elif e.fields["compress_alg"] == "zlib":
            page = zlib.decompress(payload)
        else:
            assert e.fields["compress_alg"] == "pglz", e.path
            page = pglz.decompress(payload, BLCKSZ)
        assert len(page) == BLCKSZ
        yield block, page, 8 + csize
        pos += 8 + csize


def page_lsn(page: bytes) -> int:
    hi, lo = struct.unpack_from("<II", page)
    return (hi << 32) | lo


# -- the catalogs under test ----------------------------------------------------


@dataclass
class Catalog:
    name: str
    instance: Path
    full: str  # FULL, compress none
    delta: str  # DELTA child of `full`, compressed
    delta2: str | None  # DELTA child of `delta` (other algorithm)

    def backup(self, bid: str) -> Path:
        return self.instance / bid


@pytest.fixture(scope="module")
def real_catalog(fixtures_dir: Path) -> Catalog:
    inst = fixtures_dir / "pg15" / "catalog" / "backups" / "main"
    return Catalog("pg_probackup", inst, "TP2KB6", "TP2KBJ", None)


@pytest.fixture(scope="module")
def written_catalog() -> Iterator[Catalog]:
    """FULL (none) -> DELTA (zlib) -> DELTA (pglz) of a cluster shaped like the fixture's."""
    require_postgres()
    with pg_workdir() as work:
        with running_cluster(work, initdb_args=["--wal-segsize=1"]) as pg:
            ts = make_owned_dir(work / "tblspc_ts1")
            pg.psql(
                f"CREATE TABLESPACE ts1 LOCATION '{ts}';"
                "CREATE TABLE items (id int PRIMARY KEY, v text);"
                "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 3000) g;"
                "CREATE TABLE ts_table (id int PRIMARY KEY, v text) TABLESPACE ts1;"
                "INSERT INTO ts_table SELECT g, repeat('y', g % 50)"
                " FROM generate_series(1, 2000) g;"
                "CREATE UNLOGGED TABLE ul_cache (a int); INSERT INTO ul_cache SELECT 1;"
                "CREATE TABLE empty_t (a int);"
                "VACUUM ANALYZE; CHECKPOINT;"
            )
            store = work / "catalog"
            init_catalog(store)
            add_instance(store, "main", pg.datadir)
            def backup(mode: str, alg: str) -> str:
                opts = BackupOptions(
                    mode=mode, compress_alg=alg, threads=2, sync=False,
                    host=str(pg.sockdir), port=pg.port, user="postgres",
                )
                return run_backup(store, "main", opts).backup_id

            full = backup("FULL", "none")
            pg.psql(
                "UPDATE items SET v = v || 'x' WHERE id % 100 = 0;"
                "INSERT INTO ts_table SELECT g, 'new' FROM generate_series(2001, 2100) g;"
                "CREATE TABLE late (a int); INSERT INTO late SELECT generate_series(1, 500);"
            )
            delta = backup("DELTA", "zlib")
            pg.psql("UPDATE items SET v = 'z' WHERE id < 20")
            delta2 = backup("DELTA", "pglz")
            yield Catalog("mkbackup", store / "backups" / "main", full, delta, delta2)


@pytest.fixture(params=["real", "written"])
def catalog(request: pytest.FixtureRequest) -> Catalog:
    name = "real_catalog" if request.param == "real" else "written_catalog"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


def incrementals(cat: Catalog) -> list[tuple[str, str]]:
    """(child, parent) pairs of the catalog's DELTA backups."""
    pairs = [(cat.delta, cat.full)]
    if cat.delta2:
        pairs.append((cat.delta2, cat.delta))
    return pairs


def backups(cat: Catalog) -> list[str]:
    return [cat.full, cat.delta] + ([cat.delta2] if cat.delta2 else [])


# -- parity: same keys, same field sets, same layouts -----------------------------


def test_instance_conf_has_the_same_lines(real_catalog: Catalog, written_catalog: Catalog) -> None:
    real = skeleton(real_catalog.instance / "pg_probackup.conf")
    ours = skeleton(written_catalog.instance / "pg_probackup.conf")
    assert ours == real
    conf = dict(read_kv(written_catalog.instance / "pg_probackup.conf"))
    assert conf["xlog-seg-size"] == "1048576"
    assert int(conf["system-identifier"]) > 0


@pytest.mark.parametrize("which", ["full", "delta"])
def test_backup_control_has_the_same_lines(
    real_catalog: Catalog, written_catalog: Catalog, which: str
) -> None:
    real = skeleton(real_catalog.backup(getattr(real_catalog, which)) / "backup.control")
    ours = skeleton(written_catalog.backup(getattr(written_catalog, which)) / "backup.control")
    assert ours == real


def test_backup_control_values_are_formatted_alike(catalog: Catalog) -> None:
    formats = {
        "backup-mode": r"FULL|DELTA|PAGE",
        "stream": r"true",
        "compress-alg": r"none|zlib|pglz",
        "compress-level": r"1",
        "from-replica": r"false",
        "block-size": r"8192",
        "xlog-block-size": r"8192",
        "checksum-version": r"1",
        "program-version": r"2\.5\.16",
        "server-version": r"15",
        "timelineid": r"1",
        "start-lsn": r"[0-9A-F]+/[0-9A-F]+",
        "stop-lsn": r"[0-9A-F]+/[0-9A-F]+",
        "start-time": r"'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00'",
        "end-time": r"'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00'",
        "recovery-time": r"'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00'",
        "recovery-xid": r"\d+",
        "data-bytes": r"\d+",
        "wal-bytes": r"\d+",
        "uncompressed-bytes": r"\d+",
        "pgdata-bytes": r"\d+",
        "status": r"OK",
        "parent-backup-id": r"'[0-9A-Z]+'",
        "primary_conninfo": r"'user=postgres [^']*host=[^ ']+ port=\d+ [^']*'",
        "content-crc": r"\d+",
    }
    for bid in backups(catalog):
        for key, value in read_kv(catalog.backup(bid) / "backup.control"):
            assert re.fullmatch(formats[key], value), (bid, key, value)


def test_content_lines_have_the_same_field_sets_per_kind(
    real_catalog: Catalog, written_catalog: Catalog
) -> None:
    def kinds(cat: Catalog) -> dict[str, set[tuple[str, ...]]]:
        out: dict[str, set[tuple[str, ...]]] = {}
        for bid in backups(cat):
            for e in read_content(cat.backup(bid)):
                assert LINE.match(e.line), e.line
                out.setdefault(e.kind(), set()).add(e.keys)
        return out

    real, ours = kinds(real_catalog), kinds(written_catalog)
    assert set(ours) == set(real)
    for kind in real:
        assert ours[kind] == real[kind], kind
    # one exact line to pin separators and field order
    pg_version = next(e for e in read_content(written_catalog.backup(written_catalog.full))
                      if e.path == "PG_VERSION")
    assert pg_version.line == (
        '{"path":"PG_VERSION", "size":"3", "mode":"33152", "is_datafile":"0", "is_cfs":"0",'
        f' "crc":"{crc32c(b"15" + bytes([10]))}", "compress_alg":"none", "external_dir_num":"0",'
        ' "dbOid":"0"}'
    )


def test_special_entries(catalog: Catalog) -> None:
    for bid in backups(catalog):
        backup = catalog.backup(bid)
        entries = {e.path: e for e in read_content(backup)}
        for name in ("backup_label", "tablespace_map", "database_map"):
            assert entries[name].fields["mode"] == "33188", (bid, name)
            data = (backup / "database" / name).read_bytes()
            assert entries[name].size == len(data)
            assert int(entries[name].fields["crc"]) == crc32c(data)
        spc = (backup / "database" / "tablespace_map").read_text().split()[0]
        assert entries[f"pg_tblspc/{spc}"].fields["mode"] == "16832"
        assert entries["pg_wal"].is_dir and "pg_wal/archive_status" not in entries
        label = (backup / "database" / "backup_label").read_text()
        assert re.search(r"^LABEL: .* with pg_probackup$", label, re.M)
        assert "BACKUP METHOD: streamed" in label
        for db in (backup / "database" / "database_map").read_text().splitlines():
            assert re.fullmatch(r'\{"dbOid":"\d+", "datname":"[^"]+"\}', db)
        for d in ("pg_notify", "pg_serial", "pg_snapshots", "pg_subtrans", "pg_replslot",
                  "pg_stat_tmp", "pg_dynshmem"):
            assert entries[d].is_dir, d
        for d in [p for p, e in entries.items() if e.is_dir]:
            if d.rpartition("/")[2] in ("pg_notify", "pg_serial", "pg_snapshots", "pg_subtrans",
                                        "pg_replslot", "pg_stat_tmp", "pg_dynshmem", "pgsql_tmp"):
                assert not [p for p in entries if p.startswith(d + "/")], d
        for gone in ("postmaster.pid", "postmaster.opts"):
            assert gone not in entries
        assert not [p for p in entries if p.endswith("pg_internal.init")]


def test_unlogged_relations_keep_only_init_and_vm(catalog: Catalog) -> None:
    entries = {e.path: e for e in read_content(catalog.backup(catalog.full))}
    inits = [p for p in entries if p.endswith("_init")]
    assert inits
    for init in inits:
        rel = init[: -len("_init")]
        assert rel not in entries and rel + "_fsm" not in entries, rel
    assert any(p[: -len("_init")] + "_vm" in entries for p in inits)


def test_pg_control_crc_is_the_one_stored_inside(catalog: Catalog) -> None:
    for bid in backups(catalog):
        backup = catalog.backup(bid)
        e = next(e for e in read_content(backup) if e.path == "global/pg_control")
        raw = (backup / "database" / "global" / "pg_control").read_bytes()
        assert e.size == len(raw) == BLCKSZ
        (inside,) = struct.unpack_from("<I", raw, 288)
        assert int(e.fields["crc"]) == inside == crc32c(raw[:288])


def test_file_crcs_sizes_and_content_crc(catalog: Catalog) -> None:
    for bid in backups(catalog):
        backup = catalog.backup(bid)
        ctl = dict(read_kv(backup / "backup.control"))
        content = (backup / "backup_content.control").read_bytes()
        assert int(ctl["content-crc"]) == crc32c(content)
        data = unc = wal = 0
        for e in read_content(backup):
            stored = backup / "database" / e.path
            if e.is_dir:
                data += 4096
                unc += 4096
                continue
            if e.size <= 0:
                assert not stored.exists(), e.path
                if e.size == -1 or e.is_datafile:
                    assert e.fields["compress_alg"] == "none"
                continue
            raw = stored.read_bytes()
            assert len(raw) == e.size, e.path
            if e.path != "global/pg_control":
                assert int(e.fields["crc"]) == crc32c(raw), e.path
            if e.path.startswith("pg_wal/"):
                wal += e.size
            else:
                data += e.size
                unc += int(e.fields.get("full_size", e.size))
        assert (int(ctl["data-bytes"]), int(ctl["uncompressed-bytes"]), int(ctl["wal-bytes"])) \
            == (data, unc, wal)


def test_page_header_map_regions_tile_the_file(catalog: Catalog) -> None:
    for bid in backups(catalog):
        backup = catalog.backup(bid)
        regions = sorted(
            (int(e.fields["hdr_off"]), int(e.fields["hdr_size"]))
            for e in read_content(backup) if "n_headers" in e.fields
        )
        raw = (backup / "page_header_map").read_bytes()
        pos = 0
        for off, size in regions:
            assert off == pos
            assert raw[off:off + 2] == b"\x78\x01"
            pos += size
        assert pos == len(raw)


def test_page_streams_agree_with_their_maps(catalog: Catalog) -> None:
    for bid in backups(catalog):
        backup = catalog.backup(bid)
        ctl = dict(read_kv(backup / "backup.control"))
        alg = ctl["compress-alg"]
        for e in read_content(backup):
            if not (e.is_datafile and e.size > 0):
                continue
            assert e.fields["compress_alg"] == alg
            records = map_records(backup, e)
            assert records[0][2] == 0 and records[-1][2] == e.size
            pages = list(decode_pages(backup, e))
            assert len(pages) == int(e.fields["n_headers"])
            assert int(e.fields["full_size"]) == len(pages) * BLCKSZ
            blocks = [b for b, _, _ in pages]
            assert blocks == sorted(set(blocks)) and blocks[-1] < int(e.fields["n_blocks"])
            pos = 0
            for (lsn, block, rec_pos, checksum), (b, page, rec_size) in zip(
                records[:-1], pages, strict=True
            ):
                assert (block, rec_pos) == (b, pos), e.path
                pos += rec_size
                if page == bytes(BLCKSZ):
                    assert (lsn, checksum) == (0, 0)
                    continue
                absolute = int(e.fields["segno"]) * 131072 + block
                assert lsn == page_lsn(page)
                assert checksum == page_checksum(page, absolute)
                assert checksum == struct.unpack_from("<H", page, 8)[0]
            if alg == "none":
                assert e.size == len(pages) * (BLCKSZ + 8)
            else:
                assert any(size < BLCKSZ + 8 for _, _, size in pages), e.path


def test_delta_rule(catalog: Catalog) -> None:
    """Stored pages of files the parent had: LSN 0 or >= parent start-lsn; others older."""
    for child, parent in incrementals(catalog):
        parent_ctl = dict(read_kv(catalog.backup(parent) / "backup.control"))
        start = parse_lsn(parent_ctl["start-lsn"])
        parent_entries = {e.path: e for e in read_content(catalog.backup(parent))}
        seen_unchanged = seen_partial = False
        for e in read_content(catalog.backup(child)):
            if e.is_dir:
                continue
            if e.path not in parent_entries:
                assert e.size >= 0, e.path  # new files are stored whole
                if e.is_datafile and e.size > 0:
                    assert int(e.fields["n_headers"]) == int(e.fields["n_blocks"]), e.path
                continue
            if e.path.endswith("pg_filenode.map"):
                assert e.size > 0
            if not e.is_datafile:
                if e.size == -1:
                    pe = parent_entries[e.path]
                    assert e.fields["crc"] == pe.fields["crc"]
                    assert e.fields["full_size"] == pe.fields.get("full_size", pe.fields["size"])
                continue
            if e.size == -1:
                seen_unchanged = True
                assert "n_blocks" in e.fields and e.fields["crc"] == "0"
            elif e.size > 0:
                records = map_records(catalog.backup(child), e)[:-1]
                assert all(lsn == 0 or lsn >= start for lsn, _, _, _ in records), e.path
                if len(records) < int(e.fields["n_blocks"]):
                    seen_partial = True
        assert seen_unchanged and seen_partial


def test_wal_covers_start_to_stop(catalog: Catalog) -> None:
    for bid in backups(catalog):
        backup = catalog.backup(bid)
        ctl = dict(read_kv(backup / "backup.control"))
        segs = sorted(e.path[len("pg_wal/"):] for e in read_content(backup)
                      if e.path.startswith("pg_wal/"))
        first = parse_lsn(ctl["start-lsn"]) // (1 << 20)
        last = parse_lsn(ctl["stop-lsn"]) // (1 << 20)
        names = {int(s[8:16], 16) * 4096 + int(s[16:], 16) for s in segs}
        assert set(range(first, last + 1)) <= names, (bid, segs)
