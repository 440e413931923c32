"""`pbkfs list` tells the live mounts (and the diffs under a directory) as they are;
`pbkfs reset` discards a diff's changes, keeps its binding, and refuses a mounted diff."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.support.mounting import mounted, pbkfs
from tests.support.postgres import PgCluster, free_port, make_owned_dir

pytestmark = pytest.mark.mount


def listed(*args: str) -> list[dict[str, object]]:
    out = json.loads(pbkfs("list", "--format", "json", *args).stdout)
    assert isinstance(out, list)
    return out


@pytest.mark.postgres
def test_list_shows_every_live_mount(fixtures_dir: Path, work: Path) -> None:
    catalog = fixtures_dir / "pg15" / "catalog"
    a, b = make_owned_dir(work / "a", 0o700), make_owned_dir(work / "b", 0o700)
    diffs = work / "diffs"
    with mounted(a, diffs / "a", store=catalog, instance="main", backup_id="TP2KC3"), \
            mounted(b, diffs / "b", store=catalog, instance="nochk", backup_id="TP2KD0"):
        with PgCluster(a, free_port(), make_owned_dir(work / "sock", 0o755)) as pg:
            pg.start()
            rows = {r["mountpoint"]: r for r in listed() if str(r["mountpoint"]).startswith(
                str(work))}
            assert set(rows) == {str(a), str(b)}
            ra, rb = rows[str(a)], rows[str(b)]
            assert (ra["store"], ra["instance"], ra["backup"], ra["diff"]) == (
                str(catalog), "main", "TP2KC3", str(diffs / "a"))
            assert (rb["instance"], rb["backup"]) == ("nochk", "TP2KD0")
            assert ra["postgresql_running"] is True and rb["postgresql_running"] is False
            assert isinstance(ra["pid"], int) and os.path.exists(f"/proc/{ra['pid']}")
            assert int(str(ra["diff_bytes"])) > 0 and ra["parents"] == []
            text = pbkfs("list").stdout
            assert str(a) in text and "PostgreSQL running" in text
            pg.stop()
        by_diff = {r["diff"]: r for r in listed("--diffs", str(diffs))}
        assert by_diff[str(diffs / "a")]["mounted_at"] == str(a)
        assert by_diff[str(diffs / "b")]["backup"] == "TP2KD0"
    assert not [r for r in listed() if str(r["mountpoint"]).startswith(str(work))]
    assert all(r["mounted_at"] is None for r in listed("--diffs", str(diffs)))


def test_reset_discards_changes_and_keeps_the_binding(fixtures_dir: Path, work: Path) -> None:
    catalog = fixtures_dir / "pg15" / "catalog"
    mnt, diff = work / "mnt", work / "diff"
    with mounted(mnt, diff, store=catalog, instance="main", backup_id="TP2KB6"):
        original = (mnt / "PG_VERSION").read_bytes()
        (mnt / "PG_VERSION").write_bytes(b"changed\n")
        (mnt / "new-file").write_bytes(b"x" * 10000)
        refused = pbkfs("reset", "-d", str(diff), check=False)
        assert refused.returncode != 0 and "in use" in refused.stderr, refused.stderr
    binding = (diff / "binding.json").read_bytes()
    done = pbkfs("reset", "-d", str(diff))
    assert "reset" in done.stdout and (diff / "binding.json").read_bytes() == binding
    with mounted(mnt, diff, store=catalog, instance="main", backup_id="TP2KB6"):
        assert (mnt / "PG_VERSION").read_bytes() == original
        assert not (mnt / "new-file").exists()
        assert (mnt / "postgresql.auto.conf").read_bytes().count(b"archive_mode = 'off'") == 1
    # a diff bound to another backup is still refused after a reset: the binding stayed
    other = pbkfs("mount", "-B", str(catalog), "--instance", "main", "-i", "TP2KBJ",
                  "-D", str(mnt), "-d", str(diff), check=False)
    assert other.returncode != 0 and "TP2KB6" in other.stderr, other.stderr


def test_reset_refuses_what_is_not_a_diff(work: Path) -> None:
    d = work / "notadiff"
    d.mkdir()
    (d / "precious").write_text("data")
    proc = pbkfs("reset", "-d", str(d), check=False)
    assert proc.returncode != 0 and "binding.json" in proc.stderr
    assert (d / "precious").read_text() == "data"


def test_reset_moves_the_changes_aside_and_deletes_them_in_the_background(
        work: Path, base: Path) -> None:
    """A reset renames the diff's content away (one rename per entry, whatever its size)
    and returns; the old files go in a detached process, also those an earlier reset
    left behind; the next mount starts from the backup meanwhile."""
    mnt, diff = work / "mnt", work / "diff"
    with mounted(mnt, diff, plain=base):
        for i in range(200):
            (mnt / f"f{i}").write_bytes(os.urandom(10000))
    leftover = diff / ".trash.1.1"  # an earlier reset whose deletion was cut short
    (leftover / "objects").mkdir(parents=True)
    (leftover / "objects" / "7").write_bytes(b"old")
    done = pbkfs("reset", "-d", str(diff))
    assert "reset" in done.stdout
    with mounted(mnt, diff, plain=base):
        assert sorted(p.name for p in mnt.iterdir()) == ["dir"]
        assert (mnt / "dir" / "file").read_bytes() == (base / "dir" / "file").read_bytes()
    deadline = time.monotonic() + 60
    while any(p.name.startswith(".trash.") for p in diff.iterdir()):
        assert time.monotonic() < deadline, sorted(p.name for p in diff.iterdir())
        time.sleep(0.1)
    assert listed("--diffs", str(work))[0]["diff"] == str(diff)
