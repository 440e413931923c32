"""The project's own exception types.

Every failure a user can cause or meet (bad catalog, broken chain, corrupt
page, bad argument) is one of these, carrying the file and what is wrong, so
the CLI can print one clear line and exit non-zero. Anything else escaping is
a bug.
"""

from __future__ import annotations


class PbkfsError(Exception):
    """Base of every error pbkfs reports to a user."""


class CatalogError(PbkfsError):
    """The catalog (store, instance, backup directory or metadata file) is unusable."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ParseError(CatalogError):
    """A metadata file (backup.control, backup_content.control, ...) does not parse."""

    def __init__(self, path: object, reason: str, line: int | None = None) -> None:
        self.line = line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(where, reason)
        self.path = str(path)


class ChainError(CatalogError):
    """A backup chain cannot be resolved or must not be used."""

    def __init__(self, backup_id: str, path: object, reason: str) -> None:
        self.backup_id = backup_id
        super().__init__(path, f"backup {backup_id}: {reason}")


class CorruptionError(PbkfsError):
    """Stored bytes fail a check: never serve them."""

    def __init__(
        self, path: object, reason: str, block: int | None = None, backup_id: str | None = None
    ) -> None:
        self.path = str(path)
        self.reason = reason
        self.block = block
        self.backup_id = backup_id
        parts = []
        if backup_id:
            parts.append(f"backup {backup_id}")
        parts.append(str(path))
        if block is not None:
            parts.append(f"block {block}")
        super().__init__(", ".join(parts) + f": {reason}")


class DecodeError(CorruptionError):
    """A page payload does not decode to exactly one page."""


class UnsupportedError(PbkfsError):
    """Valid input that this version of pbkfs does not handle."""


class UsageError(PbkfsError):
    """A bad command-line argument or option value."""


class CodecError(PbkfsError):
    """A compressed payload is malformed (the caller adds file and block)."""
