"""The mount process: recover the diff, start workers, serve FUSE, shut down cleanly.

Run as `python -m pbkfs.mount.frontend OPTIONS_JSON|- [READY_FD]` by `pbkfs mount`
(`-`: the options come on stdin; pbkfs.mount.launch) or in-process with
--foreground. It reports "OK" or "ERR <message>" on READY_FD once the mount
answers or setup failed, so the launcher can return the right exit status
with the real reason.

Order at start: lock the diff, open the source, check the binding, rebuild
the namespace (snapshot + journal replay), settle sizes from the diff files,
delete objects nothing references, write a fresh generation if anything was
replayed, start the workers, mount. Order at exit: the kernel has unmounted
(no more requests), workers finish and fsync everything, the journal is
synced, a snapshot makes the next mount fast, the lock is released.
"""

from __future__ import annotations

import errno
import functools
import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
import pyfuse3
import trio

from pbkfs.config import worker_count
from pbkfs.diff import journal as J
from pbkfs.diff.directory import Binding, DiffDir, describe, same_source
from pbkfs.diff.durability import (
    check_dirty,
    clear_dirty,
    make_scratch,
    mark_dirty,
    remove_scratch,
)
from pbkfs.diff.journal import JournalDir
from pbkfs.diff.layers import (
    Layers,
    ancestors,
    base_snapshot,
    branch_binding,
    hold_shared,
    parent_binding,
    refuse_if_parent,
)
from pbkfs.diff.sharedmaps import Segment, remove_stale, segment_name
from pbkfs.errors import PbkfsError, UsageError
from pbkfs.fs.branchwal import setup_branch_wal
from pbkfs.fs.firstmount import apply_postgresql_conf, create_recovery_files, setup_local_wal
from pbkfs.fs.namespace import FsError, Namespace
from pbkfs.fs.settle import collect_garbage, open_namespace
from pbkfs.fs.vfs import Vfs
from pbkfs.ipc.router import Router
from pbkfs.memtrim import start_trimmer, trim
from pbkfs.mount import controlsocket as control
from pbkfs.mount.checks import (
    check_entries,
    check_fuse,
    check_mountpoint,
    resolve_owner,
)
from pbkfs.mount.expiry import Activity, watch
from pbkfs.mount.fuseops import Operations
from pbkfs.mount.kerneltune import connection_of, tune_bdi, tune_connection
from pbkfs.mount.options import MountOptions
from pbkfs.mount.runtime import (
    RuntimeRecord,
    control_path,
    remove_record,
    sweep_stale,
    write_record,
)
from pbkfs.mount.stats import MountStats
from pbkfs.mount.walbind import bind_wal, release_submounts
from pbkfs.proc import start_time
from pbkfs.storage.location import is_store_url
from pbkfs.storage.settings import configure
from pbkfs.storage.stats import stats_dir
from pbkfs.view.source import Source, SourceSpec, open_source

if TYPE_CHECKING:
    from pbkfs.view.prefetch import StartupPlan

_logger = logging.getLogger("pbkfs.mount")


def log(msg: str) -> None:
    """One log line (text or JSON, set up by pbkfs.logsetup) on stderr or the diff's log."""
    _logger.info(msg)


def log_error(msg: str) -> None:
    _logger.error(msg)


class Prepared:
    """Everything set up before the kernel sees the mount."""

    def __init__(self) -> None:
        self.diff: DiffDir
        self.source: Source  # closed once the namespace is ready (prepare)
        self.block_size = 8192
        self.ns: Namespace
        self.journal: JournalDir
        self.uid = 0
        self.gid = 0
        self.scratch = ""  # --no-wal: where pg_wal lives while mounted
        self.local_wal = False  # pg_wal in <diff>/wal (resolved from the options and binding)
        self.layers: list[str] = []  # a branch: the objects/ of the diffs under it, bottom first
        self.layer_locks: list[int] = []  # shared flocks on those diffs, held while mounted
        self.wal_bind = False  # ... bind-mounted over the mount's pg_wal (pbkfs.mount.walbind)
        self.prefetch: StartupPlan | None = None  # an object store's catalog: what to fetch ahead
        self.first_read: dict[int, Callable[[], None]] = {}  # inode: run at its first read


def prepare(opts: MountOptions) -> Prepared:
    p = Prepared()
    check_fuse()
    mnt = os.path.abspath(opts.mountpoint)
    check_mountpoint(mnt)
    worker_count(opts.workers)
    p.uid, p.gid = resolve_owner(opts.owner, mnt)
    diff = DiffDir(opts.diff)
    if os.path.realpath(diff.path).startswith(os.path.realpath(mnt) + os.sep):
        raise UsageError("the diff directory must not be inside the mount point")
    p.source = open_source(opts.source, opts.caches)
    if is_store_url(opts.source.store):  # what PostgreSQL's start reads, fetched meanwhile
        from pbkfs.view.prefetch import fetch_all, startup_plan

        p.prefetch = startup_plan(p.source.view)
        fetch_all(p.prefetch.common, log)
    check_entries(p.source)
    if opts.no_wal and opts.local_wal is not None:
        raise UsageError("--no-wal excludes --local-wal and --wal-through-mount")
    bound = None
    if os.path.isdir(diff.path):  # refuse a foreign diff before touching anything in it
        bound = diff.check_binding(opts.source, p.source.chain_ids(), opts.local_wal)
        if opts.no_wal and bound is not None:
            raise UsageError(f"--no-wal needs a new diff directory; {diff.path} already "
                             "holds a resumable diff (its WAL would be lost)")
    parent = DiffDir(opts.parent) if opts.parent else None
    if parent is not None:
        if bound is not None:
            raise UsageError(f"diff directory {diff.path} already holds a diff: mount it "
                             "without --from")
        pb = parent_binding(parent)
        if not same_source(pb.source, opts.source):
            raise UsageError(f"--from {parent.path}: bound to {describe(pb.source)}, not to "
                             f"{describe(opts.source)}")
        if check_dirty(parent.path, opts.force):
            log(f"parent diff {parent.path} was left dirty by a --perf-unsafe mount; "
                "branched anyway (--force)")
        if opts.no_wal or (opts.local_wal is not None and opts.local_wal != pb.local_wal):
            raise UsageError("a branch keeps its parent's pg_wal layout: no --no-wal, "
                             "--local-wal or --wal-through-mount with --from")
        bound = pb
    p.local_wal = wal_layout(opts, bound.local_wal if bound else None, p.source)
    refuse_if_parent(diff, "a writable mount")  # (before the lock its branches may hold)
    diff.create()
    diff.lock()
    try:
        if parent is not None:
            p.layer_locks.append(hold_shared(parent))  # refused while the parent is mounted
            branch_binding(diff, parent)
        if check_dirty(diff.path, opts.force):
            log(f"diff {diff.path} was left dirty by a --perf-unsafe mount; used (--force)")
        prepare_locked(opts, p, diff, mnt)
        if p.prefetch is not None:
            p.first_read = prefetch_on_connect(p.ns, p.prefetch)
        if opts.perf_unsafe:
            mark_dirty(diff.path)
    except BaseException:
        remove_scratch(p.scratch)
        release_layers(p)
        diff.unlock()
        raise
    diff.publish_lock(mnt)
    # Serving needs only the namespace: the view (file lists of the whole chain, index
    # caches) is the workers' business, so its memory goes back now.
    p.block_size = p.source.block_size
    p.source.close()
    del p.source
    gc.collect()
    trim()
    return p


def open_layers(p: Prepared, binding: Binding, lineage: list[tuple[DiffDir, Binding]]
                ) -> J.Snapshot | None:
    """A branch: hold its ancestors, read through their objects, start from their tree."""
    for layer, lb in lineage:
        if not same_source(lb.source, binding.source):
            raise UsageError(f"parent diff {layer.path} is bound to {describe(lb.source)}, "
                             f"not to {describe(binding.source)}")
        p.layer_locks.append(hold_shared(layer))
    p.layers = [layer.objects for layer, _ in lineage]
    p.source.layers = Layers(p.layers, p.source.block_size)

    def open_layer(layer: DiffDir, base: J.Snapshot | None, snap: J.Snapshot | None,
                   records: list[J.Record], base_time_ns: int) -> J.Snapshot:
        ns, _ = open_namespace(layer, p.source, base_time_ns, snap, records,
                               uid=p.uid, gid=p.gid, log=log, base=base)
        return ns.snapshot(0)

    return base_snapshot(lineage, open_layer)


def prefetch_on_connect(ns: Namespace, plan: StartupPlan) -> dict[int, Callable[[], None]]:
    """Per database directory, the fetch of its system catalogs, keyed by the inode of its
    relation map: the first file a backend connecting to that database reads. (Not at its
    open: PostgreSQL's start after a crash or from a backup opens and fsyncs every file of
    the data directory, recovery_init_sync_method=fsync, without reading them.)"""
    from pbkfs.view.prefetch import RELATION_MAP, fetch_all

    hooks: dict[int, Callable[[], None]] = {}
    for directory, fetches in plan.databases.items():
        try:
            node = ns.resolve(f"{directory}/{RELATION_MAP}")
        except FsError:
            continue  # no map (dropped, or not a database directory): nothing to warm
        hooks[node.ino] = functools.partial(fetch_all, fetches, log,
                                            what=f"a connection to {directory}")
    return hooks


def release_layers(p: Prepared) -> None:
    for fd in p.layer_locks:
        os.close(fd)
    p.layer_locks.clear()


def wal_layout(opts: MountOptions, bound: bool | None, source: Source) -> bool:
    """Whether pg_wal lives in a plain directory of the diff (the default for a data
    directory: PostgreSQL's WAL writes and fsyncs then never wait on the mount; a diff made
    before keeps the layout it was made with)."""
    if opts.local_wal is not None:
        return opts.local_wal
    if bound is not None:
        return bound
    return not opts.no_wal and source.is_data_directory()


def prepare_locked(opts: MountOptions, p: Prepared, diff: DiffDir, mnt: str) -> None:
    p.diff = diff
    binding = diff.bind(opts.source, p.source.chain_ids(), p.local_wal,
                        resumable=not opts.no_wal, wal_bind=os.geteuid() == 0)
    p.wal_bind = binding.local_wal and binding.wal_bind
    lineage = ancestors(diff, binding)
    base = open_layers(p, binding, lineage) if lineage else None
    jdir = JournalDir(diff.ns)
    snap, records = jdir.load()
    ns, replayed = open_namespace(diff, p.source, binding.base_time_ns, snap, records,
                                  uid=p.uid, gid=p.gid, journal=jdir.append, log=log, base=base)
    removed = collect_garbage(ns, diff)
    fresh = snap is None and not records
    if fresh and lineage:
        # The first mount of a branch: the tree is the parent's (its settings and
        # recovery files included); only a local pg_wal needs a copy of its own.
        if p.local_wal:
            copied, skipped = setup_branch_wal(ns, diff, lineage[-1][0], p.uid, p.gid,
                                               bind=p.wal_bind)
            log(f"branch of {lineage[-1][0].path}: copied {copied} files of its pg_wal "
                f"({skipped} recycled segments left out)")
        jdir.sync()
        jdir.write_snapshot(ns.snapshot(jdir.generation + 1))
    elif fresh:
        # The first mount of this diff: shape the tree once, then persist it as a snapshot.
        if ns.root.children and "PG_VERSION" in ns.root.children:  # a data directory
            rec = opts.recovery
            apply_postgresql_conf(ns, diff, p.source, p.uid, p.gid, opts.postgresql_conf,
                                  rec.auto_conf_append if rec else b"")
            if rec is not None and (rec.create or rec.options):
                create_recovery_files(ns, diff, p.source, p.uid, p.gid, rec)
        if p.local_wal:
            setup_local_wal(ns, diff, p.source, p.uid, p.gid, bind=p.wal_bind)
        elif opts.no_wal:
            p.scratch = make_scratch(p.uid, p.gid)
            setup_local_wal(ns, diff, p.source, p.uid, p.gid, target=p.scratch)
        jdir.sync()
        jdir.write_snapshot(ns.snapshot(jdir.generation + 1))
    elif replayed:
        jdir.write_snapshot(ns.snapshot(jdir.generation + 1))
        log(f"recovered the namespace: {replayed} journal records, {removed} stale objects")
    p.ns = ns
    p.journal = jdir


def serve(opts: MountOptions, p: Prepared, ready: Callable[[str | None], None]) -> int:
    mnt = os.path.abspath(opts.mountpoint)
    remove_stale()
    sweep_stale()
    shm_name = segment_name(os.getpid(), uuid.uuid4().hex[:8])
    seg = Segment.create(shm_name, opts.workers, p.block_size)
    store_stats = stats_dir(shm_name) if opts.source.store.startswith("s3://") else ""
    router = Router(opts.workers, opts.source, p.diff.objects, shm_name, opts.threads,
                    log=log_error, caches=opts.caches, request_timeout=opts.request_timeout,
                    log_format=opts.log_format, log_level=opts.log_level, store=opts.store,
                    layers=p.layers)
    vfs = Vfs(p.ns, router, p.diff.objects, p.journal, seg, p.diff.path, log=log_error)
    vfs.bs = p.block_size
    vfs.defer_fsync = opts.perf_unsafe
    vfs.first_read = p.first_read
    record: RuntimeRecord | None = None  # written once mounted

    def restarted(index: int) -> None:
        vfs.worker_restarted(index)
        if record is not None:  # the record names the live workers (unmount --force)
            record.workers = router.pids()
            write_record(record)

    router.on_restart = restarted
    ops = Operations(vfs, writeback=opts.writeback, entry_timeout=opts.entry_timeout,
                     attr_timeout=opts.attr_timeout)
    options = {"fsname=pbkfs", "subtype=pbkfs", "default_permissions"}
    if p.uid != os.geteuid():
        options.add("allow_other")
    mounted = False
    status = 0
    expired: list[str] = []  # why the mount ended by itself (pbkfs.mount.expiry)
    synced = False  # the workers confirmed everything durable, the journal is synced

    async def main() -> None:
        nonlocal mounted, synced, record
        async with trio.open_nursery() as nursery:
            # Workers open their views while the kernel mounts and PostgreSQL starts.
            await router.start(nursery, wait=False)
            try:
                pyfuse3.init(ops, mnt, options)
            except RuntimeError as exc:
                raise UsageError(f"mounting {mnt} failed ({exc}): check /dev/fuse and "
                                 "fusermount3") from None
            mounted = True
            ctl = control_path(mnt)
            os.makedirs(os.path.dirname(ctl), mode=0o700, exist_ok=True)
            record = RuntimeRecord(os.getpid(), mnt, p.diff.path, shm_name, router.pids(), ctl,
                                   started=start_time(os.getpid()), sid=os.getsid(0),
                                   conn=connection_of(mnt))
            write_record(record)
            nursery.start_soon(_signals, mnt)
            stats = MountStats(ops, vfs, router, p.diff.path, store_stats)
            await nursery.start(control.serve, ctl, stats.answer)  # listening before ready

            async def answering() -> None:
                # The kernel's INIT has been answered: the mount works, and the kernel has
                # set up its per-mount settings (which the INIT reply would overwrite).
                await ops.initialized.wait()
                if p.wal_bind:
                    try:
                        # In a thread: the kernel looks pg_wal up through this mount.
                        await trio.to_thread.run_sync(bind_wal, p.diff.wal, mnt)
                    except OSError as exc:
                        ready(str(exc))
                        raise
                ready(None)
                # Tuning is not needed to answer: done after `pbkfs mount` returned. The
                # INIT reply sets the kernel's per-mount values, so this waits for it first.
                await trio.sleep(0.05)
                if opts.tune_writeback:
                    tune_bdi(mnt)
                    tune_connection(mnt)
                log(f"mounted {describe_source(opts.source)} at {mnt} "
                    f"({opts.workers} workers, diff {p.diff.path})")

            nursery.start_soon(answering)
            if opts.idle_timeout or opts.ttl:
                activity = Activity(lambda: sum(ops.counts.values()), lambda: len(vfs.handles))
                nursery.start_soon(watch, mnt, opts.idle_timeout, opts.ttl, opts.force,
                                   activity, log, expired.append)
            nursery.start_soon(vfs.housekeeping)
            st = vfs.stats
            start_trimmer(lambda: st.reads_hot + st.reads_worker + st.writes)
            # The kernel's cached pages are not dropped when a write fails: invalidating
            # waits in the kernel for pages under writeback that only this process can
            # answer, and a kill -9 during that wait leaves the mount hung for good.
            try:
                await pyfuse3.main()
            finally:
                with trio.CancelScope(shield=True):
                    # Names removed while mounted become durable, then their objects go.
                    await vfs.sync_journal()
                    workers_synced = await router.shutdown()
                    if opts.perf_unsafe and router.restart_count():
                        workers_synced = False  # a dead worker took deferred fsyncs with it
                    await trio.to_thread.run_sync(p.journal.sync)
                    synced = workers_synced
                nursery.cancel_scope.cancel()

    try:
        if os.environ.get("PBKFS_PROFILE"):
            import cProfile

            cProfile.runctx("trio.run(main)", globals(), {"trio": trio, "main": main},
                            os.environ["PBKFS_PROFILE"])
        else:
            trio.run(main)
    except BaseException as exc:  # report, then clean up below
        leaf = _leaf(exc)
        if not mounted:
            ready(f"{leaf}")
        log_error(f"mount loop ended with {type(leaf).__name__}: {leaf}")
        status = 1
    finally:
        if mounted:
            if status != 0:
                release_submounts(mnt, lazy=True)  # else the unmount below is refused
            pyfuse3.close(unmount=status != 0)
        vfs.close_fds()
        if ops.counts:
            log("requests: " + ", ".join(f"{k} {v}" for k, v in sorted(ops.counts.items())))
            st = vfs.stats
            log(f"reads: {st.reads_hot} in the frontend, {st.reads_worker} by workers; "
                f"{st.writes} writes, {st.fsyncs} fsyncs, {st.journal_syncs} journal syncs")
        try:
            p.journal.write_snapshot(p.ns.snapshot(p.journal.generation + 1))
        except OSError as exc:
            log(f"could not write the namespace snapshot ({exc}); the journal keeps everything")
        p.journal.close()
        if status == 0 and synced:
            clear_dirty(p.diff.path)
        elif opts.perf_unsafe:
            log(f"not everything was made durable; {p.diff.path} stays marked dirty")
        remove_scratch(p.scratch)
        seg.close()
        seg.unlink()
        if store_stats:
            shutil.rmtree(store_stats, ignore_errors=True)
        remove_record(mnt)
        p.diff.unlock()
        release_layers(p)
        log(f"unmounted {mnt}")
        if expired and opts.remove_diff:
            shutil.rmtree(p.diff.path, ignore_errors=True)  # the log goes with it
            log(f"expiry: removed the diff {p.diff.path} (--remove-diff)")
    return status


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (trio wraps errors of its tasks in groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def describe_source(spec: SourceSpec) -> str:
    if spec.kind == "plain":
        return f"directory {spec.path}"
    return f"backup {spec.backup_id} ({spec.instance})"


async def _signals(mnt: str) -> None:
    """SIGTERM/SIGINT: unmount like `pbkfs unmount` would (refused while busy)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
        async for sig in sigs:
            log(f"signal {signal.Signals(sig).name}: unmounting {mnt}")
            busy = await trio.to_thread.run_sync(release_submounts, mnt, False)
            if busy:
                log(f"unmount refused ({busy}); still serving")
                continue
            res = await trio.to_thread.run_sync(
                lambda: subprocess.run(["fusermount3", "-u", mnt], capture_output=True, text=True)
            )
            if res.returncode != 0:
                log(f"unmount refused ({res.stderr.strip()}); still serving")


def redirect_log(path: str) -> None:
    """Background mounts log into the diff directory (workers inherit it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def run(opts: MountOptions, ready: Callable[[str | None], None], background: bool = False) -> int:
    configure(opts.store)  # s3:// catalogs: endpoint, region, the host's cache
    try:
        p = prepare(opts)
        if background:
            redirect_log(opts.log_file or p.diff.log)
    except PbkfsError as exc:
        ready(str(exc))
        return 2
    except OSError as exc:
        # Writes without a file name are the diff's (binding, journal, snapshot).
        where = exc.filename or f"the diff directory {opts.diff}"
        ready(f"{where}: {os.strerror(exc.errno or errno.EIO)} (preparing the mount)")
        return 2
    return serve(opts, p, ready)


def main(argv: list[str]) -> int:
    if argv[1] == "-":  # started early by `pbkfs mount` (pbkfs.mount.launch): options follow
        raw = sys.stdin.buffer.read()
        if not raw:
            return 0  # the command failed before handing anything over
        opts = msgspec.json.decode(raw, type=MountOptions)
    else:
        opts = msgspec.json.decode(argv[1].encode(), type=MountOptions)
    ready_fd = int(argv[2]) if len(argv) > 2 else -1
    sent = False

    def ready(err: str | None) -> None:
        nonlocal sent
        if sent or ready_fd < 0:
            if err and ready_fd < 0:
                log(f"error: {err}")
            return
        sent = True
        msg = "OK\n" if err is None else f"ERR {err}\n"
        try:
            os.write(ready_fd, msg.encode())
            os.close(ready_fd)
        except OSError:
            pass

    background = ready_fd >= 0
    if background:
        # Detached: no terminal; the log goes into the diff directory once it is ours.
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from pbkfs.fdlimit import raise_soft_limit
    from pbkfs.logsetup import setup_logging

    raise_soft_limit()  # for the workers it starts, which inherit it (pbkfs.fdlimit)

    setup_logging(opts.log_format, opts.log_level)  # stderr: the diff's log once redirected
    return run(opts, ready, background)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
