"""`pbkfs verify`: check a backup chain end to end."""

from __future__ import annotations

import os
import sys
import time

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

from pbkfs.cli.common import object_store_options, reports_errors, store_option
from pbkfs.view import open_view
from pbkfs.view.verify import total_work, verify_view


@click.command()
@store_option
@click.option("--instance", required=True, help="Instance name.")
@click.option("-i", "--backup-id", required=True, help="The backup whose chain to verify.")
@click.option("-j", "--threads", "jobs", type=click.IntRange(min=1),
              default=min(4, os.cpu_count() or 1), show_default=True, help="Parallel readers.")
@click.option("--force", is_flag=True, help="Accept ORPHAN/CORRUPT chain members.")
@reports_errors
@object_store_options
def verify(store: str, instance: str, backup_id: str, jobs: int, force: bool) -> None:
    """Read every byte of a backup's chain and check every CRC, page and size.

    Exits 0 only when everything is good; otherwise lists each problem with its backup, file,
    block and reason.
    """
    started = time.monotonic()
    view = open_view(store, instance, backup_id, force=force)
    try:
        chain = " <- ".join(b.id for b in reversed(view.chain))
        click.echo(f"Verifying {instance}/{view.backup_id} (chain {chain}) with {jobs} threads",
                   err=True)
        if sys.stderr.isatty():
            with Progress("[progress.description]{task.description}", BarColumn(),
                          DownloadColumn(), TimeRemainingColumn(), transient=True) as bar:
                task = bar.add_task("verify", total=total_work(view))
                report = verify_view(view, jobs, lambda n: bar.advance(task, n))
        else:
            report = verify_view(view, jobs)
    finally:
        view.close()
    elapsed = time.monotonic() - started
    for problem in report.problems:
        click.echo(f"ERROR: {problem}")
    mb = report.logical_bytes / 1e6
    click.echo(
        f"{'OK' if report.ok else 'CORRUPT'}: {report.stored_files} stored files "
        f"({report.stored_bytes / 1e6:.1f} MB) and {report.logical_files} files of the data "
        f"directory ({mb:.1f} MB) checked in {elapsed:.1f}s; {len(report.problems)} problems"
    )
    if not report.ok:
        sys.exit(1)
