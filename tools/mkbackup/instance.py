"""`init` and `add-instance`: the catalog skeleton and pg_probackup.conf of an instance."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pbkfs.catalog.pgcontrol import read_pg_control
from pbkfs.errors import CatalogError, UsageError
from tools.mkbackup.catalogfiles import parse_key_values, render_instance_conf, write_file

DIR_MODE = 0o700


@dataclass(frozen=True)
class Instance:
    store: Path
    name: str
    pgdata: Path
    system_identifier: int
    xlog_seg_size: int

    @property
    def backups_dir(self) -> Path:
        return self.store / "backups" / self.name


def init_catalog(store: Path) -> None:
    """Create `<store>/backups` and `<store>/wal`; refuse a non-empty directory."""
    if store.exists():
        if not store.is_dir():
            raise CatalogError(store, "exists and is not a directory")
        if any(store.iterdir()):
            raise CatalogError(store, "backup catalog already exists and is not empty")
    store.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    for sub in ("backups", "wal"):
        (store / sub).mkdir(mode=DIR_MODE)


def _check_store(store: Path) -> None:
    if not (store / "backups").is_dir():
        raise CatalogError(store, "not a backup catalog (no backups/ directory; run init first)")


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or name.startswith("."):
        raise UsageError(f"--instance: invalid instance name {name!r}")


def add_instance(store: Path, name: str, pgdata: Path) -> Instance:
    """Register `pgdata` as instance `name` (reads its pg_control; no server needed)."""
    _check_store(store)
    _check_name(name)
    if not pgdata.is_absolute():
        raise UsageError(f"-D/--pgdata must be an absolute path, got {str(pgdata)!r}")
    inst_dir = store / "backups" / name
    if inst_dir.exists():
        raise CatalogError(inst_dir, f"instance {name!r} already exists")
    control = read_pg_control(pgdata)
    inst_dir.mkdir(mode=DIR_MODE)
    (store / "wal" / name).mkdir(mode=DIR_MODE, exist_ok=True)
    write_file(
        inst_dir / "pg_probackup.conf",
        render_instance_conf(os.path.normpath(pgdata), control.system_identifier,
                             control.xlog_seg_size),
    )
    return Instance(store, name, pgdata, control.system_identifier, control.xlog_seg_size)


def load_instance(store: Path, name: str) -> Instance:
    """The instance's settings from its pg_probackup.conf."""
    _check_store(store)
    _check_name(name)
    conf_path = store / "backups" / name / "pg_probackup.conf"
    if not conf_path.exists():
        raise CatalogError(
            store / "backups" / name, f"instance {name!r} does not exist (run add-instance first)"
        )
    conf = parse_key_values(conf_path)
    try:
        return Instance(
            store=store,
            name=name,
            pgdata=Path(conf["pgdata"]),
            system_identifier=int(conf["system-identifier"]),
            xlog_seg_size=int(conf.get("xlog-seg-size", 16 * 1024 * 1024)),
        )
    except (KeyError, ValueError) as exc:
        raise CatalogError(conf_path, f"missing or bad setting: {exc}") from None
