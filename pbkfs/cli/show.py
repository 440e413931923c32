"""`pbkfs show`: list backups (or, with --archive, the WAL archive) like `pg_probackup show`."""

from __future__ import annotations

import json

import click

from pbkfs.catalog.store import Store
from pbkfs.cli.common import object_store_options, reports_errors, store_option
from pbkfs.cli.showinfo import show_json, show_text


@click.command()
@store_option
@click.option("--instance", help="Only this instance.")
@click.option("--archive", is_flag=True,
              help="Show the WAL archive per timeline: segment range, gaps, backups.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json uses pg_probackup's structure and key names.")
@reports_errors
@object_store_options
def show(store: str, instance: str | None, archive: bool, fmt: str) -> None:
    """List the backups of a catalog, newest first, with each backup's chain."""
    st = Store(store)
    if archive:
        from pbkfs.cli.archiveinfo import show_archive_json, show_archive_text

        if fmt == "json":
            click.echo(json.dumps(show_archive_json(st, instance), indent=4))
        else:
            click.echo(show_archive_text(st, instance), nl=False)
        return
    if fmt == "json":
        click.echo(json.dumps(show_json(st, instance), indent=4))
    else:
        click.echo(show_text(st, instance), nl=False)
