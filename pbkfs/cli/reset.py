"""`pbkfs reset -d DIFF`: discard every change of an unmounted diff, keep its binding."""

from __future__ import annotations

import click

from pbkfs.cli.common import reports_errors


@click.command("reset")
@click.option("-d", "--diff-dir", "diff", required=True, type=click.Path(path_type=str),
              help="The diff directory to reset (not mounted).")
@reports_errors
def reset(diff: str) -> None:
    """Discard every change made through a diff's mounts; the next mount is as the first.

    The binding (which backup, the pg_wal layout) stays; a diff in use by a live mount is
    refused, naming the mount."""
    from pbkfs.mount.cleanup import wipe

    for line in wipe(diff, keep_binding=True):
        click.echo(line)
