"""`pbkfs mount` and `pbkfs unmount`."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from pbkfs.cli.common import object_store_options, reports_errors
from pbkfs.errors import UsageError
from pbkfs.recovery.options import recovery_target_options


@click.command("mount")
@click.option("-B", "--backup-path", "store", envvar="BACKUP_PATH",
              type=click.Path(file_okay=False, path_type=str),
              help="The pg_probackup catalog (default: $BACKUP_PATH).")
@click.option("--instance", help="Instance name in the catalog.")
@click.option("-i", "--backup-id", help="The backup to mount (any FULL/DELTA/PAGE in a chain).")
@click.option("-D", "--pgdata", "mountpoint", required=True,
              type=click.Path(path_type=str), help="Mount point: an existing empty directory.")
@click.option("-d", "--diff-dir", "diff", required=True, type=click.Path(path_type=str),
              help="Where changes go (created if missing; one live mount per diff).")
@click.option("--workers", type=int, default=None,
              help="Worker processes (default: mount.workers of the config, 0 = CPUs).")
@click.option("--owner", help="USER[:GROUP] owning the files (default: mount.owner of the "
              "config, else the mount point's owner).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=str),
              help="Configuration file (default: $PBKFS_CONFIG, else /etc/pbkfs/pbkfs.toml).")
@click.option("--local-wal/--wal-through-mount", "local_wal", default=None,
              help="Where pg_wal lives: a plain directory of the diff, pg_wal a symlink to it "
              "(the default for a new diff of a data directory: WAL writes and fsyncs never "
              "wait on the mount), or inside the mount like every other file. A diff keeps "
              "the layout it was made with.")
@click.option("--perf-unsafe", is_flag=True,
              help="fsync does nothing until unmount (a crash can lose acknowledged commits); "
              "the diff is marked dirty while mounted.")
@click.option("--no-wal", is_flag=True,
              help="Keep pg_wal only while mounted (outside the diff); the diff can never be "
              "mounted again. Needs a new diff directory.")
@click.option("--force", is_flag=True,
              help="Mount a diff left dirty by a --perf-unsafe mount that did not unmount; "
              "and let --idle-timeout/--ttl end the mount even while files are open.")
@click.option("--no-postgresql-conf", is_flag=True,
              help="Do not add conf/postgresql.pbkfs.conf settings to postgresql.auto.conf.")
@click.option("--no-writeback-cache", is_flag=True, hidden=True,
              help="Disable the kernel writeback cache (for measurements).")
@click.option("--plain-base", hidden=True, type=click.Path(file_okay=False, path_type=str),
              help="Serve a plain directory instead of a backup (tests, benchmarks).")
@click.option("--idle-timeout", metavar="DURATION",
              help="Unmount after this long without file-system activity and open files "
              "(like 90s, 15m, 2h, 1d).")
@click.option("--ttl", metavar="DURATION",
              help="Unmount this long after mounting, whatever happens.")
@click.option("--remove-diff", is_flag=True,
              help="When --idle-timeout or --ttl ends the mount, also remove its diff.")
@click.option("--from", "parent", metavar="DIFF", type=click.Path(path_type=str),
              help="Branch: start the new diff (-d) from the current state of the unmounted "
                   "diff DIFF, which becomes a read-only layer under it (no data copied).")
@click.option("--foreground", is_flag=True, help="Stay attached; log to stderr.")
@click.option("--timeout", type=float, default=None,
              help="Seconds to wait for the mount to answer (default: mount.timeout).")
@recovery_target_options
@reports_errors
@object_store_options
def mount(
    store: str | None,
    instance: str | None,
    backup_id: str | None,
    mountpoint: str,
    diff: str,
    workers: int | None,
    owner: str | None,
    config_file: str | None,
    local_wal: bool | None,
    perf_unsafe: bool,
    no_wal: bool,
    force: bool,
    no_postgresql_conf: bool,
    no_writeback_cache: bool,
    plain_base: str | None,
    idle_timeout: str | None,
    ttl: str | None,
    remove_diff: bool,
    parent: str | None,
    foreground: bool,
    timeout: float | None,
    **recovery_options: Any,
) -> None:
    """Mount a backup as a live, writable PostgreSQL data directory.

    ARCHIVE-mode backups (and any backup given a --recovery-target-* option) get recovery
    settings as `pg_probackup restore` writes them, with restore_command = `pbkfs
    archive-get` on this catalog; by default they stop at the backup's consistent point and
    promote. With a target and no -i, pbkfs picks the newest backup that can reach it.

    A diff that exists already remounts without -B/--instance (its binding names the
    backup); --from DIFF branches from an unmounted diff.
    """
    from pbkfs.mount.launch import Launch, take_early

    # The mount process imports its half while this one imports and plans its own.
    launch = take_early() or (None if foreground else Launch())
    try:
        _mount(launch, store, instance, backup_id, mountpoint, diff, workers, owner,
               config_file, local_wal, perf_unsafe, no_wal, force, no_postgresql_conf,
               no_writeback_cache, plain_base, foreground, timeout, recovery_options,
               expiry_options(idle_timeout, ttl, remove_diff), parent)
    finally:
        if launch is not None:
            launch.abandon()


def _bound_source(diff: str) -> Any:
    """The source a diff directory's binding names (None: no diff there)."""
    from pbkfs.diff.directory import DiffDir

    if not os.path.isdir(diff):
        return None
    binding = DiffDir(diff).read_binding()
    return binding.source if binding is not None else None


def expiry_options(idle_timeout: str | None, ttl: str | None, remove_diff: bool
                   ) -> dict[str, Any]:
    """--idle-timeout, --ttl and --remove-diff as MountOptions fields."""
    from pbkfs.mount.expiry import parse_duration

    if remove_diff and not (idle_timeout or ttl):
        raise UsageError("--remove-diff needs --idle-timeout or --ttl")
    return {"idle_timeout": parse_duration(idle_timeout, "--idle-timeout") if idle_timeout
            else 0.0,
            "ttl": parse_duration(ttl, "--ttl") if ttl else 0.0, "remove_diff": remove_diff}


def _mount(
    launch: Any, store: str | None, instance: str | None, backup_id: str | None,
    mountpoint: str, diff: str, workers: int | None, owner: str | None,
    config_file: str | None, local_wal: bool | None, perf_unsafe: bool, no_wal: bool,
    force: bool, no_postgresql_conf: bool, no_writeback_cache: bool, plain_base: str | None,
    foreground: bool, timeout: float | None, recovery_options: dict[str, Any],
    expiry: dict[str, Any], parent: str | None = None,
) -> None:
    from pbkfs.config import load_config, worker_count
    from pbkfs.mount import daemon
    from pbkfs.mount.options import MountOptions
    from pbkfs.recovery.mountplan import MountRecovery, plan_mount
    from pbkfs.recovery.options import target_from_options
    from pbkfs.storage.location import describe
    from pbkfs.storage.settings import current
    from pbkfs.view.source import SourceSpec

    cfg = load_config(config_file)
    workers = cfg.effective_workers() if workers is None else worker_count(workers)
    owner = owner or cfg.mount.owner or None
    if timeout is None:
        timeout = max(cfg.mount.timeout, 1.0)

    recovery: MountRecovery | None = None
    bound = _bound_source(parent or diff) if parent or not (store or instance) else None
    if parent and bound is None:
        raise UsageError(f"--from {parent}: not a pbkfs diff (no binding.json)")
    if bound is not None and not plain_base:
        if store or instance or backup_id or any(recovery_options.values()):
            raise UsageError("-B/--instance/-i and recovery targets come from the diff's "
                             f"binding here ({os.path.abspath(parent or diff)}); leave them out")
        spec = bound  # a remount, or a branch: the backup its binding names
    elif plain_base:
        spec = SourceSpec("plain", path=os.path.abspath(plain_base))
    else:
        missing = [n for n, v in (("-B/--backup-path", store), ("--instance", instance))
                   if not v]
        if missing:
            raise UsageError(f"missing {', '.join(missing)}")
        assert store and instance
        target = target_from_options(recovery_options)
        try:
            recovery = plan_mount(describe(store), instance, backup_id, target,
                                  os.path.abspath(diff))
        except OSError as exc:  # e.g. an unreadable store: one clear line, no traceback
            where = exc.filename or store
            raise UsageError(f"{where}: {exc.strerror or exc}") from None
        if recovery.describe:
            click.echo(recovery.describe, err=True)
        spec = SourceSpec("catalog", store=describe(store), instance=instance,
                          backup_id=recovery.backup_id)
    opts = MountOptions(
        source=spec,
        mountpoint=os.path.abspath(mountpoint),
        diff=os.path.abspath(diff),
        workers=workers,
        owner=owner,
        local_wal=local_wal,
        writeback=not no_writeback_cache,
        postgresql_conf=not no_postgresql_conf and cfg.mount.apply_postgresql_conf,
        entry_timeout=cfg.mount.entry_timeout,
        attr_timeout=cfg.mount.attr_timeout,
        request_timeout=cfg.mount.request_timeout,
        caches=cfg.cache,
        store=current(),
        log_format=cfg.log.format,
        log_level=cfg.log.level,
        log_file=os.path.abspath(cfg.log.file) if cfg.log.file else "",
        foreground=foreground,
        recovery=recovery,
        perf_unsafe=perf_unsafe,
        no_wal=no_wal,
        force=force,
        parent=os.path.abspath(parent) if parent else "",
        **expiry,
    )
    if foreground:
        def ready(err: str | None) -> None:
            if err is None:
                click.echo(f"pbkfs: mounted at {opts.mountpoint}", err=True)
            else:
                click.echo(f"pbkfs: error: {err}", err=True)

        from pbkfs.mount import frontend  # loads pyfuse3: only when serving here

        sys.exit(frontend.run(opts, ready))
    pid = daemon.start_background(opts, timeout=timeout, launch=launch)
    click.echo(f"mounted {opts.mountpoint} (pid {pid}, diff {opts.diff})")


@click.command("unmount")
@click.option("-D", "--pgdata", "mountpoint", required=True, type=click.Path(path_type=str),
              help="The mount point.")
@click.option("--timeout", type=float, default=600.0, show_default=True,
              help="Seconds to wait for the mount process to persist and exit.")
@click.option("--force", is_flag=True,
              help="When busy, hung or already detached, kill the mount's own processes "
              "(frontend and workers) and detach lazily (fsynced data is kept; the next mount "
              "of the diff recovers it).")
@reports_errors
def unmount(mountpoint: str, timeout: float, force: bool) -> None:
    """Flush and persist everything, unmount, release the diff directory.

    Refuses a busy mount (naming the processes with files open there) unless --force; also
    clears a broken mount ("Transport endpoint is not connected")."""
    from pbkfs.mount import daemon

    for line in daemon.unmount(mountpoint, timeout=timeout, force=force):
        click.echo(line)
    click.echo(f"unmounted {os.path.abspath(mountpoint)}")
