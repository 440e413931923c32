"""The `key = value` syntax of backup.control and pg_probackup.conf (format spec §1.2)."""

from __future__ import annotations

from pbkfs.errors import CatalogError, ParseError
from pbkfs.storage.location import Location


def normalize_key(key: str) -> str:
    """pg_probackup matches keys case-insensitively with `-`, `_` and ` ` interchangeable."""
    return key.strip().lower().replace("_", "-").replace(" ", "-")


def _parse_value(raw: str, path: object, lineno: int) -> str:
    raw = raw.strip()
    if not raw.startswith("'"):
        return raw.split("#", 1)[0].rstrip()
    out: list[str] = []
    i = 1
    while i < len(raw):
        ch = raw[i]
        if ch == "'":
            if i + 1 < len(raw) and raw[i + 1] == "'":
                out.append("'")
                i += 2
                continue
            rest = raw[i + 1 :].strip()
            if rest and not rest.startswith("#"):
                raise ParseError(path, f"text after quoted value: {rest!r}", lineno)
            return "".join(out)
        out.append(ch)
        i += 1
    raise ParseError(path, "unterminated quoted value", lineno)


def parse_keyvalue(text: str, path: object) -> dict[str, str]:
    """Parse key = value lines into {normalized key: value}; the last occurrence wins."""
    values: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, rest = stripped.partition("=")
        if not sep or not key.strip():
            raise ParseError(path, f"expected 'key = value', got {stripped[:80]!r}", lineno)
        values[normalize_key(key)] = _parse_value(rest, path, lineno)
    return values


def read_keyvalue(path: Location) -> dict[str, str]:
    """Read and parse a key = value file; a missing or unreadable file is a CatalogError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CatalogError(path, f"cannot read: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(path, f"not UTF-8 text (byte {exc.start})") from exc
    return parse_keyvalue(text, path)
