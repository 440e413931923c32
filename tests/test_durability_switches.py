"""--perf-unsafe (fsync deferred to unmount, dirty marker) and --no-wal (pg_wal outside the
diff, the diff not resumable)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounting import force_unmount, is_mounted, kill9_mount, mounted, pbkfs, require_fuse
from tests.support.postgres import (
    PgCluster,
    free_port,
    make_owned_dir,
    pg_workdir,
    require_postgres,
)

pytestmark = pytest.mark.mount


@pytest.fixture
def work() -> Iterator[Path]:
    require_fuse()
    with pg_workdir("pbkfs-dur-") as w:
        yield w


@pytest.fixture
def base(work: Path) -> Path:
    b = work / "base"
    b.mkdir()
    (b / "old").write_bytes(b"old\n" * 100)
    return b


def stat_json(mnt: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(pbkfs("stat", "-D", str(mnt), "--format", "json").stdout)


def write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def plain_mount(mnt: Path, diff: Path, base: Path, *extra: str
                ) -> subprocess.CompletedProcess[str]:
    mnt.mkdir(exist_ok=True)
    return pbkfs("mount", "-D", str(mnt), "-d", str(diff), "--workers", "2",
                 "--plain-base", str(base), *extra, check=False)


def test_perf_unsafe_defers_fsync_and_clean_unmount_persists(work: Path, base: Path) -> None:
    mnt, diff = work / "mnt", work / "diff"
    data = os.urandom(300_000)
    with mounted(mnt, diff, plain=base, extra=["--perf-unsafe"]):
        assert (diff / "dirty").exists()
        write_synced(mnt / "new", data)
        os.sync()
        figures = stat_json(mnt)
        assert figures["fsyncs"] >= 1 and figures["deferred_fsyncs"] >= 1
        assert figures["journal_syncs"] == 0  # a real fsync of a new file syncs the journal
    assert not (diff / "dirty").exists()
    with mounted(mnt, diff, plain=base):
        assert (mnt / "new").read_bytes() == data
        write_synced(mnt / "other", b"x")
        assert stat_json(mnt)["journal_syncs"] >= 1
        assert not (diff / "dirty").exists()


def test_perf_unsafe_crash_leaves_dirty_diff_refused_without_force(
    work: Path, base: Path
) -> None:
    mnt, diff = work / "mnt", work / "diff"
    mnt.mkdir()
    try:
        proc = plain_mount(mnt, diff, base, "--perf-unsafe")
        assert proc.returncode == 0, proc.stderr
        (mnt / "new").write_bytes(b"written\n")
    finally:
        kill9_mount(diff)
        force_unmount(mnt, diff)
    assert (diff / "dirty").exists()
    refused = plain_mount(mnt, diff, base)
    assert refused.returncode != 0
    assert str(diff) in refused.stderr and "--force" in refused.stderr
    assert "--perf-unsafe" in refused.stderr and "Traceback" not in refused.stderr
    assert not is_mounted(mnt)
    with mounted(mnt, diff, plain=base, extra=["--force"]):
        assert (mnt / "old").read_bytes() == b"old\n" * 100
    assert not (diff / "dirty").exists()  # a clean unmount: trusted again
    with mounted(mnt, diff, plain=base):
        pass


def test_perf_unsafe_postgresql_survives_clean_unmount(work: Path, fixtures_dir: Path) -> None:
    require_postgres()
    mnt = make_owned_dir(work / "mnt", 0o700)
    diff = work / "diff"
    args = {"store": fixtures_dir / "pg15" / "catalog", "instance": "main",
            "backup_id": "TP2KC3"}
    with mounted(mnt, diff, **args, extra=["--perf-unsafe"]):  # type: ignore[arg-type]
        with PgCluster(mnt, free_port(), work / "sock") as pg:
            pg.start()
            pg.psql("CREATE TABLE u AS SELECT g FROM generate_series(1, 5000) g")
            pg.pgbench(["-i", "-s", "1", "postgres"])
            pg.stop()
        assert stat_json(mnt)["deferred_fsyncs"] > 0
    assert not (diff / "dirty").exists()
    with mounted(mnt, diff, **args):  # type: ignore[arg-type]
        with PgCluster(mnt, free_port(), work / "sock") as pg:
            pg.start()
            assert pg.psql("SELECT count(*) FROM u") == "5000"
            assert pg.psql("SELECT count(*) FROM pgbench_accounts") == "100000"
            pg.stop()


def test_no_wal_keeps_wal_outside_and_refuses_remount(work: Path, fixtures_dir: Path) -> None:
    require_postgres()
    mnt = make_owned_dir(work / "mnt", 0o700)
    diff = work / "diff"
    store = fixtures_dir / "pg15" / "catalog"
    args = {"store": store, "instance": "main", "backup_id": "TP2KC3"}
    with mounted(mnt, diff, **args, extra=["--no-wal"]):  # type: ignore[arg-type]
        scratch = Path(os.readlink(mnt / "pg_wal"))
        assert scratch.is_dir() and not str(scratch).startswith(str(diff) + os.sep)
        with PgCluster(mnt, free_port(), work / "sock") as pg:
            pg.start()  # replays and writes WAL, reads it back
            pg.psql("CREATE TABLE n AS SELECT g FROM generate_series(1, 1000) g")
            pg.psql("CHECKPOINT")
            assert pg.psql("SELECT count(*) FROM n") == "1000"
            pg.stop()
        assert any(p.stat().st_size > 0 for p in scratch.iterdir() if p.is_file())
    assert not scratch.exists()
    assert json.loads((diff / "binding.json").read_bytes())["resumable"] is False
    before = sorted(p.name for p in diff.iterdir())
    proc = pbkfs("mount", "-D", str(mnt), "-d", str(diff), "-B", str(store), "--instance",
                 "main", "-i", "TP2KC3", check=False)
    assert proc.returncode != 0 and "--no-wal" in proc.stderr and str(diff) in proc.stderr
    assert not is_mounted(mnt) and sorted(p.name for p in diff.iterdir()) == before


def test_no_wal_needs_a_new_diff_and_excludes_local_wal(work: Path, base: Path) -> None:
    mnt, diff = work / "mnt", work / "diff"
    with mounted(mnt, diff, plain=base):
        pass
    proc = plain_mount(mnt, diff, base, "--no-wal")
    assert proc.returncode != 0 and "new diff directory" in proc.stderr
    proc = plain_mount(mnt, work / "diff2", base, "--no-wal", "--local-wal")
    assert proc.returncode != 0 and "--local-wal" in proc.stderr
    assert not is_mounted(mnt)
    with mounted(mnt, diff, plain=base):  # the refusal did not spoil the old diff
        assert (mnt / "old").exists()
