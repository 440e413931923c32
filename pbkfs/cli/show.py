"""`pbkfs show`: list backups like `pg_probackup show`."""

from __future__ import annotations

import json

import click

from pbkfs.catalog.store import Store
from pbkfs.cli.common import reports_errors, store_option
from pbkfs.showinfo import show_json, show_text


@click.command()
@store_option
@click.option("--instance", help="Only this instance.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json uses pg_probackup's structure and key names.")
@reports_errors
def show(store: str, instance: str | None, fmt: str) -> None:
    """List the backups of a catalog, newest first, with each backup's chain."""
    st = Store(store)
    if fmt == "json":
        click.echo(json.dumps(show_json(st, instance), indent=4))
    else:
        click.echo(show_text(st, instance), nl=False)
