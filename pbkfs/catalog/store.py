"""A pg_probackup catalog on disk: instances and their backups (format spec §1).

Opening is cheap: backup.control files are read when a backup is listed, file
lists only when a backup's content is asked for. Nothing here ever writes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

from pbkfs.catalog.content import FileEntry, read_content
from pbkfs.catalog.control import (
    BackupControl,
    InstanceConfig,
    parse_backup_control,
    parse_instance_config,
    version_number,
)
from pbkfs.catalog.ids import decode_id
from pbkfs.codecs.crc import crc32, crc32c
from pbkfs.errors import CatalogError, PbkfsError
from pbkfs.storage.location import Location, listdir, location


class Backup:
    """One backup directory `backups/<instance>/<id>/`."""

    def __init__(self, instance: Instance, backup_id: str) -> None:
        self.instance = instance
        self.id = backup_id
        self.dir = instance.dir / backup_id

    def __repr__(self) -> str:
        return f"Backup({self.instance.name}/{self.id})"

    @cached_property
    def control_or_error(self) -> BackupControl | PbkfsError:
        try:
            return parse_backup_control(self.dir / "backup.control")
        except PbkfsError as exc:
            return exc

    @property
    def control(self) -> BackupControl:
        """backup.control; raises the parse error if it is missing or unreadable."""
        value = self.control_or_error
        if isinstance(value, PbkfsError):
            raise value
        return value

    def file_crc(self) -> Callable[[bytes | bytearray | memoryview, int], int]:
        """The checksum of this backup's file CRCs: zlib's CRC-32 for pg_probackup
        2.0.22-2.0.24, CRC-32C (Castagnoli) otherwise."""
        v = version_number(self.control.program_version)
        return crc32 if 20022 <= v <= 20024 else crc32c

    @property
    def readable(self) -> bool:
        return not isinstance(self.control_or_error, PbkfsError)

    @property
    def start_time_key(self) -> int:
        try:
            return decode_id(self.id)
        except ValueError:
            return -1

    @property
    def database_dir(self) -> Location:
        return self.dir / "database"

    @property
    def page_header_map(self) -> Location:
        return self.dir / "page_header_map"

    @cached_property
    def entries(self) -> list[FileEntry]:
        """The backup's file list, CRC-checked against backup.control."""
        return read_content(self.dir / "backup_content.control", self.control.content_crc)

    @cached_property
    def pgdata_entries(self) -> dict[str, FileEntry]:
        """Entries of the data directory itself (external_dir_num 0), by path."""
        return {e.path: e for e in self.entries if e.external_dir_num == 0}

    def stored_path(self, entry: FileEntry) -> Location:
        """Where the stored copy of `entry` lives in this backup."""
        if entry.external_dir_num:
            return self.dir / "external_directories" / f"externaldir{entry.external_dir_num}" / \
                entry.path
        return self.database_dir / entry.path


class Instance:
    """`backups/<name>/`: its configuration and its backups."""

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name
        self.dir = store.backups_dir / name

    @cached_property
    def config(self) -> InstanceConfig:
        return parse_instance_config(self.dir / "pg_probackup.conf")

    @cached_property
    def backups(self) -> dict[str, Backup]:
        """Every backup directory (name not starting with '.'), by id."""
        try:
            names = listdir(self.dir)
        except OSError as exc:
            raise CatalogError(self.dir, f"cannot list instance: {exc.strerror}") from exc
        out: dict[str, Backup] = {}
        for name in names:
            if name.startswith(".") or not (self.dir / name).is_dir():
                continue
            out[name.upper()] = Backup(self, name)
        return out

    def newest_first(self) -> list[Backup]:
        return sorted(self.backups.values(), key=lambda b: b.start_time_key, reverse=True)

    def backup(self, backup_id: str) -> Backup:
        found = self.backups.get(backup_id.upper())
        if found is None:
            known = ", ".join(b.id for b in self.newest_first()) or "none"
            raise CatalogError(self.dir, f"no backup {backup_id!r} in instance {self.name!r} "
                               f"(backups: {known})")
        return found

    @property
    def wal_dir(self) -> Location:
        return self.store.root / "wal" / self.name


class Store:
    """The catalog root given with -B: a directory or an object-store URL (s3://...)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root: Location = location(root)
        try:
            self._check_root()
        except FileNotFoundError:  # an object store without that bucket
            raise CatalogError(self.root, "backup catalog does not exist") from None

    def _check_root(self) -> None:
        if not self.root.exists():
            raise CatalogError(self.root, "backup catalog does not exist")
        if not self.root.is_dir():
            raise CatalogError(self.root, "backup catalog is not a directory")
        self.backups_dir = self.root / "backups"
        if not self.backups_dir.is_dir():
            raise CatalogError(self.root, "not a pg_probackup catalog (no backups/ directory)")
        if isinstance(self.backups_dir, Path) and not os.access(self.backups_dir,
                                                                 os.R_OK | os.X_OK):
            raise CatalogError(self.backups_dir, "permission denied")

    @cached_property
    def instances(self) -> dict[str, Instance]:
        try:
            names = listdir(self.backups_dir)
        except OSError as exc:
            raise CatalogError(self.backups_dir, f"cannot list: {exc.strerror}") from exc
        return {
            n: Instance(self, n)
            for n in names
            if not n.startswith(".") and (self.backups_dir / n).is_dir()
        }

    def instance(self, name: str) -> Instance:
        found = self.instances.get(name)
        if found is None:
            known = ", ".join(self.instances) or "none"
            raise CatalogError(self.backups_dir, f"no instance {name!r} (instances: {known})")
        return found
