"""Cutting and growing a relation of more than 1 GiB on a mount (the pg15-bigrel set).

A relation past 1 GiB lives in segment files (`16384`, `.1`, `.2`). When VACUUM truncates
it below a segment boundary, PostgreSQL cuts the last active segment and leaves every later
segment as an empty file; when the relation grows again, those segments are written anew.
The backup's bytes of the cut range must never come back: not through the kernel's
cache, not after the caches are dropped, not after a remount. The same is checked at the
file level on a backup segment with `truncate`, without PostgreSQL.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.load import drop_caches
from tests.support.mounting import mounted
from tests.support.postgres import PG_BIN, PgCluster, free_port, make_owned_dir

pytestmark = [pytest.mark.mount, pytest.mark.slow, pytest.mark.timeout(1200)]
STORE = ("pg15-bigrel", "big", "TP2ML7")
SEGMENT = 1 << 30
BLOCK = 8192
KEEP = 131_000  # blocks kept by the truncation: below the first segment boundary (131072)
GROW = 2_000  # new one-page rows afterwards: most into segment 1 again


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def mount_args(fixtures_dir: Path) -> dict[str, object]:
    fixture, instance, backup_id = STORE
    return {"store": fixtures_dir / fixture / "catalog", "instance": instance,
            "backup_id": backup_id}


def test_vacuum_truncation_across_segments_then_growth(fixtures_dir: Path, work: Path) -> None:
    mnt, diff = make_owned_dir(work / "mnt", 0o700), work / "diff"
    rel = mnt / "base" / "5" / "16384"
    seg1, seg2 = rel.with_name("16384.1"), rel.with_name("16384.2")
    with mounted(mnt, diff, **mount_args(fixtures_dir)):
        with PgCluster(mnt, free_port(), work / "sock") as pg:
            pg.start()
            kept = pg.psql(f"SELECT count(*), sum(id) FROM big WHERE ctid < '({KEEP},0)'")
            pg.psql(f"DELETE FROM big WHERE ctid >= '({KEEP},0)'; VACUUM big")
            assert pg.psql("SELECT pg_relation_size('big')") == str(KEEP * BLOCK)
            assert pg.psql("SELECT count(*), sum(id) FROM big") == kept
            # the cut segments are empty files now, as PostgreSQL leaves them
            assert rel.stat().st_size == KEEP * BLOCK
            assert seg1.stat().st_size == 0 and seg2.stat().st_size == 0
            pg.psql(f"INSERT INTO big SELECT 300000 + g, repeat('n', 8000) "
                    f"FROM generate_series(1, {GROW}) g")
            grown = pg.psql("SELECT count(*), sum(id) FROM big")
            # a few rows take the free space VACUUM found below the cut; the rest extend
            # the relation past it, into segment 1 again
            past = int(pg.psql(f"SELECT count(*) FROM big WHERE ctid >= '({KEEP},0)'"))
            size = int(pg.psql("SELECT pg_relation_size('big')"))
            assert GROW - 10 <= past <= GROW and size == (KEEP + past) * BLOCK, (past, size)
            pg.psql("CHECKPOINT")
            pg.stop()
        sizes = {p.name: p.stat().st_size for p in (rel, seg1, seg2)}
        assert sizes == {"16384": SEGMENT, "16384.1": size - SEGMENT, "16384.2": 0}, sizes
        drop_caches()
        sums = {p.name: sha256(p) for p in (rel, seg1)}
    drop_caches()
    with mounted(mnt, diff):
        assert {p.name: sha256(p) for p in (rel, seg1)} == sums
        assert seg2.stat().st_size == 0
        with PgCluster(mnt, free_port(), work / "sock") as pg:
            pg.start()
            assert pg.psql("SELECT count(*), sum(id) FROM big") == grown
            # every page of the table, read through the heap checks (the new rows' pages
            # and the cut segment's), then the table's row count by ctid range
            proc = pg.run([PG_BIN / "pg_amcheck", "-h", pg.sockdir, "-p", str(pg.port),
                           "-U", "postgres", "-d", "postgres", "-t", "big",
                           "--install-missing"], check=False)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            assert pg.psql(f"SELECT count(*) FROM big WHERE ctid >= '({KEEP},0)'") == str(past)
            pg.stop()


def test_a_backup_segment_cut_and_extended_reads_zeros_past_the_cut(
        fixtures_dir: Path, work: Path) -> None:
    """`truncate -s 100` of a 1 GiB backup segment, then `truncate -s 1G`: its first 100
    bytes as in the backup, then zeros to the end, after dropped caches and a remount."""
    mnt, diff = work / "mnt", work / "diff"
    seg = mnt / "base" / "5" / "16384.1"
    with mounted(mnt, diff, **mount_args(fixtures_dir)):
        with open(seg, "rb") as f:
            head = f.read(100)
        assert len(head) == 100 and head != bytes(100)
        for size in ("100", str(SEGMENT)):
            subprocess.run(["timeout", "60", "truncate", "-s", size, str(seg)], check=True)
        expected = hashlib.sha256(head)
        zeros = bytes(1 << 20)
        expected.update(zeros[:(1 << 20) - 100])
        for _ in range(SEGMENT // (1 << 20) - 1):
            expected.update(zeros)
        want = expected.hexdigest()
        assert sha256(seg) == want  # through the kernel's cache
        fd = os.open(seg, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        drop_caches()
        assert sha256(seg) == want
    drop_caches()
    with mounted(mnt, diff):
        assert seg.stat().st_size == SEGMENT
        assert sha256(seg) == want
