"""tools.mkbackup refuses clearly, and never leaves a failed backup looking usable.

Each case asserts the message names what is wrong, the exit status, and the
status left in backup.control (RUNNING while writing, ERROR after a failure,
never OK for an incomplete backup).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from tests.support.env import REPO, require
from tests.support.postgres import PgCluster, pg_workdir, require_postgres, running_cluster
from tools.mkbackup.backup import BackupOptions, run_backup
from tools.mkbackup.catalogfiles import parse_key_values
from tools.mkbackup.instance import add_instance, init_catalog
from tools.mkbackup.progress import Reporter


@dataclass
class Env:
    pg: PgCluster
    work: Path

    def conn_args(self) -> list[str]:
        return ["-h", str(self.pg.sockdir), "-p", str(self.pg.port), "-U", "postgres"]

    def opts(self, **kw: object) -> BackupOptions:
        base: dict[str, object] = {
            "host": str(self.pg.sockdir), "port": self.pg.port, "user": "postgres", "sync": False,
        }
        base.update(kw)
        return BackupOptions(**base)  # type: ignore[arg-type]

    def new_store(self, name: str) -> Path:
        store = self.work / name
        init_catalog(store)
        add_instance(store, "main", self.pg.datadir)
        return store


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    require_postgres()
    with pg_workdir() as work:
        with running_cluster(work, initdb_args=["--wal-segsize=1"]) as pg:
            pg.psql(
                "CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 20000) g;"
                "CREATE ROLE plain LOGIN;"
            )
            yield Env(pg, work)


def mkbackup(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.mkbackup", *args],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )


def backup_dirs(store: Path) -> list[Path]:
    return sorted(p for p in (store / "backups" / "main").iterdir() if p.is_dir())


def status_of(backup: Path) -> str:
    return parse_key_values(backup / "backup.control")["status"]


def test_server_unreachable(env: Env) -> None:
    store = env.new_store("unreachable")
    missing = env.work / "no-such-socket-dir"
    r = mkbackup("backup", "-B", str(store), "--instance", "main", "-b", "FULL", "--stream",
                 "-h", str(missing), "-p", "5999", "-U", "postgres")
    assert r.returncode == 1
    assert r.stderr.startswith("ERROR: cannot connect to the PostgreSQL server")
    assert str(missing) in r.stderr
    assert r.stdout == ""
    assert backup_dirs(store) == []


def test_not_superuser(env: Env) -> None:
    store = env.new_store("plain")
    r = mkbackup("backup", "-B", str(store), "--instance", "main", "-b", "FULL", "--stream",
                 "-h", str(env.pg.sockdir), "-p", str(env.pg.port), "-U", "plain",
                 "-d", "postgres")
    assert r.returncode == 1
    assert "role 'plain' is not a superuser" in r.stderr
    assert backup_dirs(store) == []


def test_wrong_pgdata(env: Env) -> None:
    other = PgCluster(env.work / "other" / "data", env.pg.port + 1, env.work / "other" / "sock")
    other.initdb()  # never started: only its pg_control is read
    store = env.work / "wrong-pgdata"
    init_catalog(store)
    add_instance(store, "main", other.datadir)
    r = mkbackup("backup", "-B", str(store), "--instance", "main", "-b", "FULL", "--stream",
                 *env.conn_args())
    assert r.returncode == 1
    assert "wrong PGDATA" in r.stderr and str(other.datadir) in r.stderr
    assert backup_dirs(store) == []

    r = mkbackup("add-instance", "-B", str(store), "--instance", "x", "-D", str(env.work))
    assert r.returncode == 1
    assert "not a PostgreSQL data directory" in r.stderr


def test_delta_without_a_parent(env: Env) -> None:
    store = env.new_store("noparent")
    r = mkbackup("backup", "-B", str(store), "--instance", "main", "-b", "DELTA", "--stream",
                 *env.conn_args())
    assert r.returncode == 1
    assert "no valid parent" in r.stderr and "take a FULL backup first" in r.stderr
    assert backup_dirs(store) == []


def test_delta_refuses_unusable_parents(env: Env) -> None:
    store = env.new_store("badparent")
    full = run_backup(store, "main", env.opts(mode="FULL"))
    control = full.backup_dir / "backup.control"
    good = control.read_text()

    control.write_text(good.replace("status = OK", "status = ERROR"))
    with pytest.raises(Exception, match=rf"backup {full.backup_id} .*has status ERROR"):
        run_backup(store, "main", env.opts(mode="DELTA"))

    control.write_text(good)
    content = full.backup_dir / "backup_content.control"
    text = content.read_bytes()
    content.write_bytes(text.replace(b'"path":"PG_VERSION"', b'"path":"PG_VERSIOM"'))
    with pytest.raises(Exception, match="does not match its content-crc"):
        run_backup(store, "main", env.opts(mode="DELTA"))

    content.write_bytes(text)
    delta = run_backup(store, "main", env.opts(mode="DELTA"))
    assert delta.control.parent_backup_id == full.backup_id
    assert status_of(delta.backup_dir) == "OK"
    # the failed attempts left no backup behind (they failed before starting one)
    assert backup_dirs(store) == [full.backup_dir, delta.backup_dir]


def test_status_is_running_while_written(env: Env) -> None:
    store = env.new_store("running")
    seen: list[str] = []

    class Watch(Reporter):
        def advance(self, nbytes: int) -> None:
            super().advance(nbytes)
            if not seen:
                (backup,) = backup_dirs(store)
                seen.append(status_of(backup))
                seen.append((backup / "backup.pid").read_text())

    result = run_backup(store, "main", env.opts(mode="FULL", threads=1), Watch(quiet=True))
    assert seen == ["RUNNING", f"{os.getpid()}\n"]
    assert status_of(result.backup_dir) == "OK"
    assert not (result.backup_dir / "backup.pid").exists()


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True, text=True,
    )
    require(mounted.returncode == 0, f"mounting a tmpfs (as root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_leaves_status_error(env: Env) -> None:
    with small_filesystem(env.work / "tiny", "2m") as tiny:
        store = tiny / "catalog"
        init_catalog(store)
        add_instance(store, "main", env.pg.datadir)
        r = mkbackup("backup", "-B", str(store), "--instance", "main", "-b", "FULL", "--stream",
                     *env.conn_args())
        assert r.returncode == 1
        assert "no space left on device" in r.stderr
        (backup,) = backup_dirs(store)
        assert status_of(backup) == "ERROR"
        assert not (backup / "backup_content.control").exists()
        assert not (backup / "backup.pid").exists()
    # the server ended the aborted backup itself: no WAL-retaining slot is left behind
    assert env.pg.psql("SELECT count(*) FROM pg_replication_slots") == "0"


def test_usage_errors(env: Env) -> None:
    store = env.new_store("usage")
    base = ["backup", "-B", str(store), "--instance", "main", *env.conn_args()]
    r = mkbackup(*base, "-b", "FULL")
    assert r.returncode == 1 and "--stream" in r.stderr
    r = mkbackup(*base, "-b", "PAGE", "--stream")
    assert r.returncode == 1 and "only FULL and DELTA" in r.stderr
    r = mkbackup("backup", "-B", str(store), "--instance", "nope", "-b", "FULL", "--stream")
    assert r.returncode == 1 and "instance 'nope' does not exist" in r.stderr
    r = mkbackup("init", "-B", str(store))
    assert r.returncode == 1 and "not empty" in r.stderr
    r = mkbackup(*base, "-b", "FULL", "--stream", "-j", "0")
    assert r.returncode == 1 and "-j/--threads" in r.stderr
    assert backup_dirs(store) == []


def test_progress_bar_on_a_terminal_only(env: Env) -> None:
    store = env.new_store("progress")
    out = io.StringIO()
    term = Reporter(console=Console(file=out, force_terminal=True, width=120))
    run_backup(store, "main", env.opts(mode="FULL"), term)
    text = out.getvalue()
    assert "Backing up" in text and "━" in text and "MB" in text
    assert "INFO: backup start, instance: main" in text

    r = mkbackup("backup", "-B", str(store), "--instance", "main", "-b", "DELTA", "--stream",
                 *env.conn_args())
    assert r.returncode == 0, r.stderr
    assert "━" not in r.stderr  # not a terminal: plain lines only
    lines = r.stderr.splitlines()
    assert lines and all(line.startswith("INFO: ") for line in lines)
    assert f"INFO: backup {r.stdout.strip()} completed" in r.stderr
    assert re.fullmatch(r"[0-9A-Z]+\n", r.stdout)
