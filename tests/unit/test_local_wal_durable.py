"""Contract D7: the WAL copy of --local-wal is durable (files and directories) before the
snapshot that drops pg_wal from the tree is written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pbkfs.diff.directory import DiffDir
from pbkfs.fs import firstmount
from pbkfs.fs.namespace import Namespace
from pbkfs.view.source import SourceSpec, open_source


def test_local_wal_copy_fsyncs_every_file_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "base"
    (base / "pg_wal" / "archive_status").mkdir(parents=True)
    (base / "pg_wal" / "000000010000000000000001").write_bytes(b"w" * 10000)
    (base / "pg_wal" / "archive_status" / "000000010000000000000001.done").write_bytes(b"")
    (base / "PG_VERSION").write_bytes(b"15\n")
    source = open_source(SourceSpec("plain", path=str(base)))
    diff = DiffDir(str(tmp_path / "diff"))
    diff.create()
    ns = Namespace(0, 0, 0)
    ns.load_entries(source.entries())

    synced_files: list[str] = []
    synced_dirs: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced_files.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def fsync_dir(path: str) -> None:
        synced_dirs.append(os.path.abspath(path))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(firstmount, "fsync_dir", fsync_dir)
    firstmount.setup_local_wal(ns, diff, source, os.getuid(), os.getgid())

    wal = os.path.abspath(diff.wal)
    copied = {os.path.join(wal, "000000010000000000000001"),
              os.path.join(wal, "archive_status", "000000010000000000000001.done")}
    assert copied <= set(synced_files)
    for d in (wal, os.path.join(wal, "archive_status"), os.path.dirname(wal)):
        assert d in synced_dirs, d
    # a directory is synced after what it holds: the copy's subdirectory before pg_wal's
    assert synced_dirs.index(os.path.join(wal, "archive_status")) < synced_dirs.index(wal)
    assert (Path(wal) / "000000010000000000000001").read_bytes() == b"w" * 10000
