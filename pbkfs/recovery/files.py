"""The files a mount places in a fresh diff so PostgreSQL recovers like after a restore.

Exactly what `pg_probackup restore` (2.5.16, PostgreSQL >= 12) writes: an
empty `recovery.signal`, and appended to the (already stripped)
postgresql.auto.conf a comment line and `## recovery settings` with the
target options in restore's order, `recovery_target_timeline` ('current'
unless given; 'latest' for --recovery-target=latest), `recovery_target_action`
('pause' unless given) and `restore_command` calling `pbkfs archive-get` on
this catalog. A STREAM backup without a target gets nothing.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pbkfs.catalog.lsn import format_lsn
from pbkfs.errors import UsageError
from pbkfs.recovery.plan import RecoveryPlan
from pbkfs.recovery.target import RecoveryTarget
from pbkfs.storage.location import Location, describe, is_store_url

RECOVERY_SIGNAL = "recovery.signal"
AUTO_CONF = "postgresql.auto.conf"
# Characters that would end or alter the double-quoted shell words of restore_command.
SHELL_UNSAFE = ('"', "\\", "$", "`", "\n", "\r", "\0")


@dataclass(frozen=True)
class RecoveryFiles:
    """What to add to a fresh diff: files to create and text to append to postgresql.auto.conf."""

    create: dict[str, bytes] = field(default_factory=dict)  # path -> content (mode 0600)
    auto_conf_append: bytes = b""

    @property
    def empty(self) -> bool:
        return not self.create and not self.auto_conf_append

    def apply_to(self, datadir: str | os.PathLike[str]) -> None:
        """Write into a plain data directory (an exported tree, or a test's copy)."""
        root = Path(datadir)
        for rel, content in self.create.items():
            path = root / rel
            path.write_bytes(content)
            path.chmod(0o600)
        if self.auto_conf_append:
            with open(root / AUTO_CONF, "ab") as f:
                f.write(self.auto_conf_append)


def default_program() -> str:
    """Absolute path of the `pbkfs` executable for restore_command.

    $PBKFS_PROGRAM when set (a wrapper the server's OS user can run), else the
    running `pbkfs` script, else `pbkfs` on $PATH.
    """
    env = os.environ.get("PBKFS_PROGRAM")
    if env:
        return os.path.abspath(env)
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "pbkfs" and os.path.isfile(argv0):
        return os.path.abspath(argv0)
    found = shutil.which("pbkfs")
    if found:
        return os.path.abspath(found)
    raise UsageError("cannot find the pbkfs executable for restore_command "
                     "(set PBKFS_PROGRAM to a path the PostgreSQL server can run)")


def _shell_word(value: str, what: str) -> str:
    bad = [c for c in SHELL_UNSAFE if c in value]
    if bad:
        raise UsageError(f"{what} {value!r} contains {bad[0]!r}, which restore_command cannot "
                         "quote")
    return '"' + value.replace("%", "%%") + '"'


def restore_command(program: str, store_root: str | os.PathLike[str] | Location,
                    instance: str) -> str:
    """restore_command as pg_probackup writes it, calling pbkfs archive-get.

    For an object-store catalog it also names the endpoint, region and cache this
    command resolved (the server's environment need not have them; credentials are
    never written here: the server's OS user finds its own the standard AWS way)."""
    store = describe(str(store_root))
    return (f"{_shell_word(program, 'program path')} archive-get -B "
            f"{_shell_word(store, 'catalog path')} --instance "
            f"{_shell_word(instance, 'instance name')}{_store_args(store)} "
            "--wal-file-path=%p --wal-file-name=%f")


def _store_args(store: str) -> str:
    if not is_store_url(store):
        return ""
    from pbkfs.storage.s3config import resolve
    from pbkfs.storage.settings import current

    cfg = current()
    conn = resolve(cfg)
    out = ""
    if conn.get("endpoint"):
        out += f" --s3-endpoint {_shell_word(conn['endpoint'], 'S3 endpoint')}"
    if conn.get("region"):
        out += f" --s3-region {_shell_word(conn['region'], 'S3 region')}"
    return out + f" --cache-dir {_shell_word(cfg.cache_dir, 'cache directory')}"


def _conf_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def format_time(when: datetime) -> str:
    """pg_probackup's time2iso: `2026-11-25 18:45:42+00` (local time, `+05:30` style offsets)."""
    local = when.astimezone()
    offset = local.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign = "+" if minutes >= 0 else "-"
    hh, mm = divmod(abs(minutes), 60)
    zone = f"{sign}{hh:02d}" + (f":{mm:02d}" if mm else "")
    return local.strftime("%Y-%m-%d %H:%M:%S") + zone


def recovery_settings(target: RecoveryTarget, command: str) -> str:
    """The `## recovery settings` block, line for line as pg_probackup 2.5.16 prints it."""
    lines = ["## recovery settings"]
    if target.name is not None:
        lines.append(f"recovery_target_name = {_conf_quote(target.name)}")
    if target.time_text is not None:
        lines.append(f"recovery_target_time = {_conf_quote(target.time_text)}")
    if target.xid is not None:
        lines.append(f"recovery_target_xid = '{target.xid}'")
    if target.lsn is not None:
        lines.append(f"recovery_target_lsn = '{format_lsn(target.lsn)}'")
    if target.stop == "immediate":
        lines.append("recovery_target = 'immediate'")
    if target.inclusive is not None:
        lines.append(f"recovery_target_inclusive = '{'true' if target.inclusive else 'false'}'")
    if target.timeline:
        timeline = target.timeline
    else:
        timeline = "latest" if target.stop == "latest" else "current"
    lines.append(f"recovery_target_timeline = '{timeline}'")
    lines.append(f"recovery_target_action = '{target.action or 'pause'}'")
    lines.append(f"restore_command = {_conf_quote(command)}")
    return "".join(line + "\n" for line in lines)


def recovery_files(
    plan: RecoveryPlan,
    store_root: str | os.PathLike[str] | Location,
    *,
    program: str | None = None,
    now: datetime | None = None,
    origin: str = "pbkfs mount",
) -> RecoveryFiles:
    """The files for a first mount of `plan.backup` (nothing when no recovery is needed).

    `origin` names the writer in the comment line (restore writes
    "pg_probackup restore"); `now` defaults to the current time.
    """
    if not plan.recovery:
        return RecoveryFiles()
    command = restore_command(program or default_program(), store_root,
                              plan.backup.instance.name)
    stamp = format_time(now or datetime.now().astimezone())
    text = (f"\n# recovery settings added by {origin} of backup {plan.backup.id} at "
            f"'{stamp}'\n" + recovery_settings(plan.target, command))
    return RecoveryFiles(create={RECOVERY_SIGNAL: b""}, auto_conf_append=text.encode())
