"""`pbkfs list`: live mounts of this host, or (`--diffs DIR`) the diffs under a directory."""

from __future__ import annotations

import json

import click
import msgspec

from pbkfs.cli.common import reports_errors


@click.command("list")
@click.option("--diffs", "diffs_dir", type=click.Path(file_okay=False, path_type=str),
              help="List the diff directories in DIR (and DIR itself) instead of live mounts.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@reports_errors
def list_cmd(diffs_dir: str | None, fmt: str) -> None:
    """Show every live mount: mount point, store, instance, backup, diff, pid, uptime, diff
    size and whether PostgreSQL runs on it."""
    from pbkfs.mount.listing import diffs_under, live_mounts

    rows = diffs_under(diffs_dir) if diffs_dir else live_mounts()
    if fmt == "json":
        click.echo(json.dumps(msgspec.to_builtins(rows), indent=2))
        return
    if not rows:
        click.echo("no diffs" if diffs_dir else "no live mounts")
        return
    for row in rows:
        d = msgspec.to_builtins(row)
        if diffs_dir:
            click.echo(f"{d['diff']}  {d['store']} {d['instance']} {d['backup']}  "
                       f"{d['diff_bytes'] / 1e6:.1f} MB  last used {d['last_used']}"
                       + (f"  mounted at {d['mounted_at']}" if d["mounted_at"] else "")
                       + (f"  branch of {d['parent']}" if d["parent"] else "")
                       + (f"  branches: {', '.join(d['children'])}" if d["children"] else ""))
        else:
            click.echo(f"{d['mountpoint']}  {d['store']} {d['instance']} {d['backup']}  "
                       f"diff {d['diff']} ({d['diff_bytes'] / 1e6:.1f} MB)  pid {d['pid']}  "
                       f"up {d['uptime_s']:.0f} s  PostgreSQL "
                       f"{'running' if d['postgresql_running'] else 'not running'}"
                       + (f"  layers: {' <- '.join(d['parents'])}" if d["parents"] else ""))
