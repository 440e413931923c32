"""A fake cluster for tools.mkbackup's archive-push: a data directory holding only what
archive-push reads (pg_control and pg_wal), archiving into a fresh catalog set up like
pg15-archive's instance `arch`."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tools.mkbackup.archive import PushOptions, archive_push
from tools.mkbackup.instance import init_catalog

FIXTURE_INSTANCE = "arch"


@dataclass
class FakeCluster:
    """A data directory holding only what archive-push reads: pg_control and pg_wal."""

    pgdata: Path
    store: Path

    def wal(self, name: str, data: bytes) -> str:
        (self.pgdata / "pg_wal" / name).write_bytes(data)
        return f"pg_wal/{name}"

    def push(self, name: str, **kw: object) -> tuple[bool, Path]:
        r = archive_push(self.store, FIXTURE_INSTANCE, name, f"pg_wal/{name}",
                         PushOptions(**kw), cwd=self.pgdata)  # type: ignore[arg-type]
        return r.pushed, r.dest

    @property
    def archive(self) -> Path:
        return self.store / "wal" / FIXTURE_INSTANCE


def fake_cluster(fixtures_dir: Path, root: Path) -> FakeCluster:
    """pg15-archive's instance: its pg_probackup.conf, and its cluster's pg_control."""
    catalog = fixtures_dir / "pg15-archive" / "catalog"
    pgdata = root / "pgdata"
    (pgdata / "global").mkdir(parents=True)
    (pgdata / "pg_wal").mkdir()
    shutil.copy(catalog / "backups" / FIXTURE_INSTANCE / "TP2MRO" / "database" / "global" /
                "pg_control", pgdata / "global" / "pg_control")
    store = root / "store"
    init_catalog(store)
    (store / "backups" / FIXTURE_INSTANCE).mkdir()
    shutil.copy(catalog / "backups" / FIXTURE_INSTANCE / "pg_probackup.conf",
                store / "backups" / FIXTURE_INSTANCE / "pg_probackup.conf")
    return FakeCluster(pgdata, store)
