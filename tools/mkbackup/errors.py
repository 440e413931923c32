"""Failures of a backup run, as the project's own error types.

They derive from pbkfs.errors.PbkfsError so the CLI prints them as one clear line.
"""

from __future__ import annotations

from pbkfs.errors import PbkfsError


class ServerError(PbkfsError):
    """The PostgreSQL server is unreachable, unsuitable, or refused a backup step."""


class DiskFullError(PbkfsError):
    """The catalog's file system ran out of space while the backup was written."""

    def __init__(self, path: object) -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: no space left on device; the backup is incomplete")
