"""`pbkfs drill`: mount, start, recover, check and throw away: does this backup restore?"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
import msgspec

from pbkfs.cli.common import object_store_options, reports_errors, store_option
from pbkfs.recovery.options import OPTIONS, recovery_target_options


@click.command("drill")
@store_option
@click.option("--instance", required=True, help="Instance name in the catalog.")
@click.option("-i", "--backup-id", help="The backup (default: the newest, or the one a "
              "recovery target needs).")
@click.option("--sql", "sql_files", multiple=True, type=click.Path(dir_okay=False, exists=True,
              path_type=Path), help="A query whose first column must be true (repeatable).")
@click.option("--no-amcheck", is_flag=True, help="Skip pg_amcheck --all --heapallindexed.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Connections pg_amcheck checks on at once (default: the number of CPUs).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--keep", is_flag=True, help="Keep the diff and the server log (the mount and "
              "the server are stopped all the same).")
@click.option("--os-user", default="postgres", show_default=True,
              help="The OS user PostgreSQL runs as.")
@click.option("--timeout", type=float, default=600.0, show_default=True,
              help="Seconds each phase (mount, start, recovery) may take.")
@recovery_target_options
@reports_errors
@object_store_options
def drill(store: str, instance: str, backup_id: str | None, sql_files: tuple[Path, ...],
          no_amcheck: bool, jobs: int | None, fmt: str, keep: bool, os_user: str,
          timeout: float,
          **recovery: Any) -> None:
    """Restore drill: mount the backup on a temporary mount point with a temporary diff,
    start PostgreSQL, wait for recovery to end, run pg_amcheck and the SQL checks, report,
    and remove everything. Exit 0 only when every check passed."""
    from pbkfs.mount.drill import Drill
    from pbkfs.storage.location import describe

    args: list[str] = []
    for option, param, _ in OPTIONS:
        if recovery.get(param) is not None:
            args.append(f"{option}={recovery[param]}")
    targeted = any(recovery.get(p) is not None for _, p, _ in OPTIONS
                   if p not in ("recovery_target_action", "recovery_target_inclusive",
                                "recovery_target_timeline"))
    if targeted and recovery.get("recovery_target_action") is None:
        args.append("--recovery-target-action=promote")  # a drill ends recovery
    from pbkfs.storage.settings import current

    cfg = current()
    extra = ["--cache-dir", cfg.cache_dir] + (["--s3-endpoint", cfg.endpoint]
                                              if cfg.endpoint else [])
    report = Drill(describe(store), instance, backup_id, args, list(sql_files),
                   not no_amcheck, os_user, keep, timeout, extra,
                   jobs or len(os.sched_getaffinity(0))).run()
    if fmt == "json":
        click.echo(json.dumps(msgspec.to_builtins(report), indent=2))
    else:
        click.echo(f"drill of {report.backup or '?'} ({report.instance}, {report.store})"
                   + (f", chain {report.chain}" if report.chain else ""))
        for c in report.checks:
            click.echo(f"  {'ok  ' if c.ok else 'FAIL'} {c.name:<10} {c.seconds:7.2f} s  "
                       f"{c.detail.splitlines()[0] if c.detail else ''}")
        if report.recovery_end:
            click.echo(f"  recovery ended at {report.recovery_end}")
        if report.kept:
            click.echo(f"  kept {report.kept}")
        click.echo("PASSED" if report.ok else f"FAILED: {report.failure}")
    sys.exit(0 if report.ok else 1)
