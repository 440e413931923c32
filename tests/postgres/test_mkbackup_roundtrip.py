"""Round trip with real PostgreSQL: write backups, read them back with pbkfs, start PostgreSQL.

One source cluster (pgbench data, TOAST, several index kinds, a tablespace,
an unlogged table) goes through FULL -> DELTA (pglz) -> DELTA (zlib, -j 2)
-> DELTA (none, taken under pgbench load), with TRUNCATE, DROP, VACUUM FULL,
relation truncation, a new database and a relation moved to the tablespace
in between. For each backup, the logical view (pbkfs.view) is written out as
a data directory and started as PostgreSQL: its tables must hold exactly
what the source held when the backup was taken, and `pbkfs verify` must pass.
A damaged copy of the written catalog must fail `pbkfs verify`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pbkfs.view import open_view
from pbkfs.view.export import export_tree
from tests.support.postgres import (
    PG_BIN,
    PgCluster,
    free_port,
    make_owned_dir,
    pg_workdir,
    prepare_datadir,
    require_postgres,
    running_cluster,
    table_fingerprint,
)
from tools.mkbackup.backup import BackupOptions, run_backup
from tools.mkbackup.instance import add_instance, init_catalog

PBKFS = Path(sys.executable).parent / "pbkfs"
RESTORED_OPTIONS = {"archive_mode": "off", "allow_in_place_tablespaces": "on"}

SETUP_SQL = """
CREATE TABLESPACE ts1 LOCATION '{ts}';
CREATE TABLE toast_docs (id int PRIMARY KEY, body text, ext text);
ALTER TABLE toast_docs ALTER COLUMN ext SET STORAGE EXTERNAL;
INSERT INTO toast_docs
  SELECT g, repeat(md5(g::text), 300),
         (SELECT string_agg(md5((g * 1000 + i)::text), '') FROM generate_series(1, 80) i)
  FROM generate_series(1, 120) g;
CREATE TABLE items (id int PRIMARY KEY, tags text[], price numeric, note text);
INSERT INTO items SELECT g, ARRAY['t' || g % 7, 'u' || g % 11], g * 1.5, md5(g::text)
  FROM generate_series(1, 5000) g;
CREATE INDEX items_tags ON items USING gin (tags);
CREATE INDEX items_note ON items USING hash (note);
CREATE INDEX items_price ON items USING brin (price);
CREATE TABLE ts_table (id int PRIMARY KEY, v text) TABLESPACE ts1;
INSERT INTO ts_table SELECT g, repeat('v', g % 40) FROM generate_series(1, 3000) g;
CREATE UNLOGGED TABLE ul_cache (k int, v text);
INSERT INTO ul_cache SELECT g, 'c' FROM generate_series(1, 2000) g;
CREATE TABLE truncate_me AS SELECT g AS id FROM generate_series(1, 3000) g;
CREATE TABLE vacfull_me (id int PRIMARY KEY, v text);
INSERT INTO vacfull_me SELECT g, md5(g::text) FROM generate_series(1, 5000) g;
CREATE TABLE drop_me AS SELECT g AS id FROM generate_series(1, 2000) g;
CREATE INDEX ON drop_me (id);
CREATE TABLE shrink_me (id int, pad text) WITH (autovacuum_enabled = off);
INSERT INTO shrink_me SELECT g, repeat('s', 100) FROM generate_series(1, 10000) g;
CREATE SEQUENCE my_seq;
SELECT nextval('my_seq') FROM generate_series(1, 42);
VACUUM ANALYZE;
CHECKPOINT;
"""

CHANGES_1 = """
TRUNCATE truncate_me;
INSERT INTO truncate_me SELECT generate_series(1, 100);
DELETE FROM vacfull_me WHERE id % 2 = 0;
VACUUM FULL vacfull_me;
DROP TABLE drop_me;
UPDATE toast_docs SET ext = ext || 'changed' WHERE id <= 30;
INSERT INTO toast_docs SELECT g, repeat('n', 5000), repeat(md5(g::text), 100)
  FROM generate_series(121, 150) g;
CREATE TABLE late_table AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 1000) g;
INSERT INTO ts_table SELECT g, 'new' FROM generate_series(3001, 3500) g;
CREATE DATABASE db2;
"""

CHANGES_2 = """
DELETE FROM shrink_me WHERE id > 3000;
VACUUM shrink_me;
ALTER TABLE items SET TABLESPACE ts1;
UPDATE items SET price = price + 1 WHERE id % 50 = 0;
SELECT nextval('my_seq') FROM generate_series(1, 10);
"""

INVARIANTS_SQL = """
SELECT (SELECT sum(abalance) FROM pgbench_accounts),
       (SELECT sum(bbalance) FROM pgbench_branches),
       (SELECT sum(tbalance) FROM pgbench_tellers),
       (SELECT coalesce(sum(delta), 0) FROM pgbench_history),
       (SELECT count(*) FROM pgbench_history)
"""


@dataclass
class Taken:
    backup_id: str
    label: str
    fingerprint: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    history_range: tuple[int, int] | None = None  # for the backup taken under load


@dataclass
class Chain:
    store: Path
    work: Path
    backups: list[Taken]


def _history_count(pg: PgCluster) -> int:
    return int(pg.psql("SELECT count(*) FROM pgbench_history"))


@pytest.fixture(scope="module")
def chain() -> Iterator[Chain]:
    require_postgres()
    with pg_workdir() as work:
        with running_cluster(work, initdb_args=["--wal-segsize=1"]) as pg:
            ts = make_owned_dir(work / "tblspc_ts1")
            pg.psql(SETUP_SQL.format(ts=ts))
            pg.pgbench(["-i", "-s", "1", "-q", "postgres"])
            store = work / "catalog"
            init_catalog(store)
            add_instance(store, "main", pg.datadir)

            def backup(mode: str, alg: str, threads: int = 1) -> str:
                opts = BackupOptions(
                    mode=mode, compress_alg=alg, threads=threads, sync=False,
                    host=str(pg.sockdir), port=pg.port, user="postgres",
                )
                return run_backup(store, "main", opts).backup_id

            taken = []
            bid = backup("FULL", "none", threads=2)
            taken.append(Taken(bid, "FULL none", table_fingerprint(pg)))

            pg.pgbench(["-n", "-c", "2", "-j", "2", "-t", "100", "postgres"])
            pg.psql(CHANGES_1)
            pg.psql(
                "CREATE TABLE t2 AS SELECT g AS id, md5(g::text) AS h"
                " FROM generate_series(1, 5000) g; CREATE SEQUENCE t2_seq;", dbname="db2"
            )
            bid = backup("DELTA", "pglz")
            taken.append(Taken(bid, "DELTA pglz", table_fingerprint(pg)))

            pg.pgbench(["-n", "-c", "2", "-j", "2", "-t", "100", "postgres"])
            pg.psql(CHANGES_2)
            pg.psql("UPDATE t2 SET h = 'x' WHERE id % 10 = 0; INSERT INTO t2 VALUES (0, 'z');",
                    dbname="db2")
            bid = backup("DELTA", "zlib", threads=2)
            taken.append(Taken(bid, "DELTA zlib -j 2", table_fingerprint(pg)))

            before = _history_count(pg)
            load = subprocess.Popen(
                ["runuser", "-u", "postgres", "--", str(PG_BIN / "pgbench"), "-h",
                 str(pg.sockdir), "-p", str(pg.port), "-U", "postgres", "-n", "-c", "2", "-j",
                 "2", "-T", "8", "postgres"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/tmp",
            )
            try:
                while _history_count(pg) == before and load.poll() is None:
                    time.sleep(0.05)
                bid = backup("DELTA", "none", threads=2)
                after_backup = _history_count(pg)
            finally:
                load.wait(timeout=120)
            taken.append(Taken(bid, "DELTA none under load",
                               history_range=(before, after_backup)))
            yield Chain(store, work, taken)


def _start_restored(chain: Chain, backup_id: str, name: str) -> PgCluster:
    dest = chain.work / name
    make_owned_dir(dest, 0o755)
    view = open_view(chain.store, "main", backup_id)
    try:
        export_tree(view, dest / "data")
    finally:
        view.close()
    prepare_datadir(dest / "data")
    restored = PgCluster(dest / "data", free_port(), dest / "sock")
    restored.start(RESTORED_OPTIONS)
    return restored


@pytest.mark.parametrize("index", [0, 1, 2])
def test_restored_backup_has_the_source_rows(chain: Chain, index: int) -> None:
    taken = chain.backups[index]
    with _start_restored(chain, taken.backup_id, f"restored-{index}") as restored:
        got = table_fingerprint(restored)
        log = restored.log_tail()
    assert got == taken.fingerprint, f"{taken.label}: rows differ\n{log}"
    assert "consistent recovery state reached" in log


def test_backup_taken_under_load_is_consistent(chain: Chain) -> None:
    taken = chain.backups[3]
    assert taken.history_range is not None
    with _start_restored(chain, taken.backup_id, "restored-load") as restored:
        row = restored.psql(INVARIANTS_SQL).split("|")
    accounts, branches, tellers, deltas, history = (int(v) for v in row)
    assert accounts == branches == tellers == deltas
    low, high = taken.history_range
    assert low < history <= high + 2  # every transaction committed before the stop, no later


def test_chain_is_what_it_should_be(chain: Chain) -> None:
    view = open_view(chain.store, "main", chain.backups[2].backup_id)
    try:
        paths = {e.path for e in view.entries()}
    finally:
        view.close()
    assert "backup_label" in paths and "global/pg_control" in paths
    assert not {"tablespace_map", "database_map"} & paths
    assert any(p.startswith("pg_tblspc/") and p.count("/") >= 4 for p in paths)


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_pbkfs_verify_passes(chain: Chain, index: int) -> None:
    bid = chain.backups[index].backup_id
    r = subprocess.run(
        [str(PBKFS), "verify", "-B", str(chain.store), "--instance", "main", "-i", bid],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def _damaged_copy(chain: Chain, name: str) -> Path:
    copy = chain.work / f"damaged-{name}"
    shutil.copytree(chain.store, copy)
    return copy


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x5A
    path.write_bytes(bytes(raw))


def _biggest_stored_datafile(backup_dir: Path) -> tuple[str, int]:
    best = ("", 0)
    for line in (backup_dir / "backup_content.control").read_text().splitlines():
        if '"is_datafile":"1"' in line:
            path = line.split('"path":"', 1)[1].split('"', 1)[0]
            size = int(line.split('"size":"', 1)[1].split('"', 1)[0])
            if size > best[1]:
                best = (path, size)
    return best


def _region_used_by_child(backup_dir: Path, child_dir: Path) -> tuple[str, int, int]:
    """(path, hdr_off, hdr_size) of a datafile stored here and unchanged (-1) in the child."""

    def fields(d: Path) -> dict[str, dict[str, str]]:
        out = {}
        for line in (d / "backup_content.control").read_text().splitlines():
            f = dict(re.findall(r'"([^"]*)":"([^"]*)"', line))
            out[f["path"]] = f
        return out

    child = fields(child_dir)
    for path, f in sorted(fields(backup_dir).items()):
        if "hdr_off" in f and child.get(path, {}).get("size") == "-1":
            return path, int(f["hdr_off"]), int(f["hdr_size"])
    raise AssertionError("no datafile of the parent is unchanged in the child")


@pytest.mark.parametrize("damage", ["page", "nondata-in-parent", "header-map", "file-list"])
def test_pbkfs_verify_catches_damage(chain: Chain, damage: str) -> None:
    copy = _damaged_copy(chain, damage)
    full, delta, last = (chain.backups[i].backup_id for i in (0, 2, 3))
    inst = copy / "backups" / "main"
    if damage == "page":
        path, size = _biggest_stored_datafile(inst / delta)
        _flip(inst / delta / "database" / path, size // 2)
        expect = path
    elif damage == "nondata-in-parent":
        (inst / full / "database" / "PG_VERSION").write_text("16\n")
        expect = "PG_VERSION"
    elif damage == "header-map":
        # the region of a file the newest backup takes from this one (not superseded)
        path, off, size = _region_used_by_child(inst / delta, inst / last)
        _flip(inst / delta / "page_header_map", off + size - 3)
        expect = path
    else:
        content = inst / delta / "backup_content.control"
        content.write_bytes(content.read_bytes().replace(b'"mode":"33152"', b'"mode":"33188"', 1))
        expect = "backup_content.control"
    r = subprocess.run(
        [str(PBKFS), "verify", "-B", str(copy), "--instance", "main", "-i", last],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode != 0, r.stdout + r.stderr
    assert expect in r.stdout + r.stderr
