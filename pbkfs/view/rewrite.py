"""The few bytes restore rewrites itself (format spec §5.1 step 3)."""

from __future__ import annotations


def strip_recovery_settings(content: bytes) -> bytes:
    """postgresql.auto.conf without the lines restore drops (plain substring tests per line)."""
    kept = []
    for line in content.splitlines(keepends=True):
        if b"restore_command" in line or b"recovery_target" in line:
            continue
        if b"include" in line and b"probackup_recovery.conf" in line:
            continue
        kept.append(line)
    return b"".join(kept)


def parse_tablespace_map(content: bytes) -> dict[str, str]:
    """`<spcOid> <absolute path>` lines -> {oid: path} (the path is the rest of the line)."""
    out: dict[str, str] = {}
    for line in content.decode("utf-8", errors="surrogateescape").splitlines():
        if not line.strip():
            continue
        oid, _, path = line.partition(" ")
        if oid.isdigit() and path:
            out[oid] = path
    return out
