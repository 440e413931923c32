"""The mount process: recover the diff, start workers, serve FUSE, shut down cleanly.

Run as `python -m pbkfs.frontend OPTIONS_JSON [READY_FD]` by `pbkfs mount`
(or in-process with --foreground). It reports "OK" or "ERR <message>" on
READY_FD once the mount answers or setup failed, so the launcher can return
the right exit status with the real reason.

Order at start: lock the diff, open the source, check the binding, rebuild
the namespace (snapshot + journal replay), settle sizes from the diff files,
delete objects nothing references, write a fresh generation if anything was
replayed, start the workers, mount. Order at exit: the kernel has unmounted
(no more requests), workers finish and fsync everything, the journal is
synced, a snapshot makes the next mount fast, the lock is released.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import pwd
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
import pyfuse3
import trio

from pbkfs import control
from pbkfs.blockmap import BlockMap, MapFormatError
from pbkfs.diffdir import DiffDir
from pbkfs.diffstore import ObjectStore, data_path, map_path
from pbkfs.errors import CorruptionError, PbkfsError, UsageError
from pbkfs.fuseops import Operations
from pbkfs.journal import JournalDir
from pbkfs.mountrecovery import MountRecovery, save_options
from pbkfs.namespace import Namespace, Node
from pbkfs.router import Router
from pbkfs.runtime import RuntimeRecord, control_path, remove_record, write_record
from pbkfs.shm import Segment, remove_stale, segment_name
from pbkfs.source import Source, SourceSpec, open_source
from pbkfs.vfs import Vfs

BDI_MAX_RATIO = int(os.environ.get("PBKFS_BDI_MAX_RATIO", "20"))


class MountOptions(msgspec.Struct):
    source: SourceSpec
    mountpoint: str
    diff: str
    workers: int
    owner: str | None = None
    local_wal: bool = False
    writeback: bool = True
    threads: int = 8
    foreground: bool = False
    postgresql_conf: bool = True
    tune_writeback: bool = True
    entry_timeout: float = 86400.0
    attr_timeout: float = 86400.0
    log_format: str = "text"
    log_level: str = "info"
    log_file: str = ""  # background mounts: default <diff>/pbkfs.log
    recovery: MountRecovery | None = None  # what a first mount adds for recovery


_logger = logging.getLogger("pbkfs.mount")


def log(msg: str) -> None:
    """One log line (text or JSON, set up by pbkfs.logsetup) on stderr or the diff's log."""
    _logger.info(msg)


def log_error(msg: str) -> None:
    _logger.error(msg)


def is_mountpoint(path: str) -> bool:
    """From /proc/self/mountinfo only: never stat a mount point that may hang."""
    want = os.path.abspath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mp = line.split()[4].encode().decode("unicode_escape")
                if mp == want:
                    return True
    except OSError:
        return os.path.ismount(want)
    return False


def resolve_owner(owner: str | None, mountpoint: str) -> tuple[int, int]:
    """--owner USER[:GROUP] or the owner of the mount point."""
    if owner:
        user, _, group = owner.partition(":")
        try:
            pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except KeyError:
            raise UsageError(f"--owner {owner}: no such user") from None
        gid = pw.pw_gid
        if group:
            try:
                gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
            except KeyError:
                raise UsageError(f"--owner {owner}: no such group") from None
        return pw.pw_uid, gid
    st = os.stat(mountpoint)
    return st.st_uid, st.st_gid


def check_mountpoint(mnt: str) -> None:
    if not os.path.exists(mnt):
        raise UsageError(f"mount point {mnt} does not exist")
    if not os.path.isdir(mnt):
        raise UsageError(f"mount point {mnt} is not a directory")
    if is_mountpoint(mnt):
        raise UsageError(f"mount point {mnt} is already a mount point")
    if os.listdir(mnt):
        raise UsageError(f"mount point {mnt} is not empty")


FUSE_DEVICE = (10, 229)  # misc major, FUSE minor


def check_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        raise UsageError("/dev/fuse is missing (load the fuse module, or give the container "
                         "--device /dev/fuse)")
    st = os.stat("/dev/fuse")
    if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != FUSE_DEVICE:
        raise UsageError("/dev/fuse is not the FUSE device (expected character device 10:229, "
                         f"found {os.major(st.st_rdev)}:{os.minor(st.st_rdev)})")
    from shutil import which

    if which("fusermount3") is None:
        raise UsageError("fusermount3 is not installed (package fuse3)")


class Prepared:
    """Everything set up before the kernel sees the mount."""

    def __init__(self) -> None:
        self.diff: DiffDir
        self.source: Source
        self.ns: Namespace
        self.journal: JournalDir
        self.uid = 0
        self.gid = 0


def settle_objects(ns: Namespace, diff: DiffDir, source: Source) -> None:
    """Sizes from the diff files; unusable bindings fall back to the backup."""
    for node in list(ns.inodes.values()):
        if node.fid is None or node.kind != "f":
            continue
        dpath = data_path(diff.objects, node.fid)
        if node.origin is not None:
            try:
                bm = BlockMap.load(map_path(diff.objects, node.fid), writable=False)
                bm.close()
            except (FileNotFoundError, MapFormatError):
                # Bound in the journal but no map made it to disk: nothing was
                # written through it, so the backup content is the content.
                node.fid = None
                node.size = source.base_size(node.origin)
                continue
            try:
                node.size = os.stat(dpath).st_size
            except FileNotFoundError:
                node.size = bm.base_size
        else:
            try:
                node.size = os.stat(dpath).st_size
            except FileNotFoundError:
                node.size = 0


def collect_garbage(ns: Namespace, diff: DiffDir) -> int:
    """Delete objects no name refers to (unlinked files, interrupted creations)."""
    live = ns.gc_fids()
    removed = 0
    for name in os.listdir(diff.objects):
        stem = name.split(".", 1)[0]
        if not stem.isdigit() or int(stem) not in live:
            os.unlink(os.path.join(diff.objects, name))
            removed += 1
    return removed


def setup_local_wal(ns: Namespace, diff: DiffDir, source: Source, uid: int, gid: int) -> None:
    """First mount with --local-wal: pg_wal becomes a symlink to <diff>/wal (a copy)."""
    try:
        node = ns.resolve("pg_wal")
    except Exception:
        node = None
    os.makedirs(diff.wal, mode=0o700, exist_ok=True)
    if node is not None and node.kind == "d":
        stack: list[tuple[str, Node]] = [("pg_wal", node)]
        while stack:
            path, d = stack.pop()
            assert d.children is not None
            for name, child in d.children.items():
                cpath = f"{path}/{name}"
                dst = os.path.join(diff.wal, cpath[len("pg_wal/") :])
                if child.kind == "d":
                    os.makedirs(dst, mode=child.mode, exist_ok=True)
                    stack.append((cpath, child))
                elif child.kind == "f" and child.origin is not None:
                    with open(dst, "wb") as f:
                        off = 0
                        while off < child.size:
                            chunk = source.read(child.origin, off, min(1 << 20, child.size - off))
                            if not chunk:
                                break
                            f.write(chunk)
                            off += len(chunk)
                        f.flush()
                        os.fsync(f.fileno())
                    os.chmod(dst, child.mode)
                os.lchown(dst, uid, gid)
        ns.replaying = True  # the initial shape of the tree, recorded by the snapshot below
        try:
            _remove_tree(ns, node)
            ns.rmdir(ns.root.ino, "pg_wal")
        finally:
            ns.replaying = False
    os.chown(diff.path, uid, gid)
    os.chown(diff.wal, uid, gid)
    os.chmod(diff.wal, 0o700)
    ns.replaying = True
    try:
        link = ns.create(ns.root.ino, "pg_wal", "l", 0o777, uid, gid, target=diff.wal)
        link.lookups = 0
    finally:
        ns.replaying = False


# Needed by every mount, whatever conf/postgresql.pbkfs.conf says: pg_tblspc/<oid> is a
# directory inside the mount (an in-place tablespace), which PostgreSQL 15 refuses at the
# end of recovery unless this is on.
REQUIRED_SETTINGS = [("allow_in_place_tablespaces", "on")]
AUTO_CONF = "postgresql.auto.conf"


def settings_text(settings: list[tuple[str, str]]) -> bytes:
    lines = ["", "# Added by pbkfs mount (the backup itself is unchanged):"]
    for name, value in settings:
        quoted = value.replace("'", "''")
        lines.append(f"{name} = '{quoted}'")
    return ("\n".join(lines) + "\n").encode()


def apply_postgresql_conf(
    ns: Namespace, diff: DiffDir, source: Source, uid: int, gid: int, extra: bool,
    recovery_text: bytes = b"",
) -> None:
    """First mount: append the mount's PostgreSQL settings (and recovery settings, as restore
    writes them) to postgresql.auto.conf (in the diff)."""
    from pbkfs.config import postgresql_settings

    settings = list(postgresql_settings()) if extra else []
    names = {n for n, _ in settings}
    settings += [s for s in REQUIRED_SETTINGS if s[0] not in names]
    node = ns.root.children.get(AUTO_CONF) if ns.root.children else None
    if node is None:
        node = ns.create(ns.root.ino, AUTO_CONF, "f", 0o600, uid, gid)
        node.lookups = 0
    store = ObjectStore(diff.objects, source, source.block_size)
    try:
        fid = ns.bind(node)
        text = settings_text(settings) + recovery_text
        if node.size and node.origin is not None:
            last = source.read(node.origin, node.size - 1, 1)
            if last != b"\n":
                text = b"\n" + text
        store.write(fid, node.origin, node.size, text)
        node.size += len(text)
        store.sync_all()
    finally:
        store.close_all()


def create_recovery_files(
    ns: Namespace, diff: DiffDir, source: Source, uid: int, gid: int, rec: MountRecovery
) -> None:
    """First mount: the files restore creates for recovery (recovery.signal), in the diff,
    and the recovery target recorded so a remount never recovers again."""
    store = ObjectStore(diff.objects, source, source.block_size)
    try:
        for name, content in rec.create.items():
            if ns.root.children and name in ns.root.children:
                continue
            node = ns.create(ns.root.ino, name, "f", 0o600, uid, gid)
            node.lookups = 0
            if content:
                store.write(ns.bind(node), node.origin, 0, content)
                node.size = len(content)
        store.sync_all()
    finally:
        store.close_all()
    save_options(diff.path, rec.options)


def _remove_tree(ns: Namespace, d: Node) -> None:
    assert d.children is not None
    for name, child in list(d.children.items()):
        if child.kind == "d":
            _remove_tree(ns, child)
            ns.rmdir(d.ino, name)
        else:
            ns.unlink(d.ino, name)


def prepare(opts: MountOptions) -> Prepared:
    p = Prepared()
    check_fuse()
    mnt = os.path.abspath(opts.mountpoint)
    check_mountpoint(mnt)
    if opts.workers < 1:
        raise UsageError(f"--workers {opts.workers}: need at least 1")
    p.uid, p.gid = resolve_owner(opts.owner, mnt)
    diff = DiffDir(opts.diff)
    if os.path.realpath(diff.path).startswith(os.path.realpath(mnt) + os.sep):
        raise UsageError("the diff directory must not be inside the mount point")
    p.source = open_source(opts.source)
    check_entries(p.source)
    if os.path.isdir(diff.path):  # refuse a foreign diff before touching anything in it
        diff.check_binding(opts.source, p.source.chain_ids(), opts.local_wal)
    diff.create()
    diff.lock()
    try:
        prepare_locked(opts, p, diff, mnt)
    except BaseException:
        diff.unlock()
        raise
    diff.publish_lock(mnt)
    return p


def check_entries(source: Source) -> None:
    """Backup symlinks must stay inside the data directory (else writes could land anywhere)."""
    for e in source.entries():
        if e.kind != "l":
            continue
        target = e.target
        if target.startswith("/") or _escapes(e.path, target):
            raise CorruptionError(e.path, f"symlink to {target!r} leads out of the data "
                                  "directory; refusing to mount it")


def _escapes(path: str, target: str) -> bool:
    """Does a relative link at `path` to `target` resolve outside the root?"""
    stack = path.split("/")[:-1]
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return True
            stack.pop()
        else:
            stack.append(part)
    return False


def prepare_locked(opts: MountOptions, p: Prepared, diff: DiffDir, mnt: str) -> None:
    p.diff = diff
    binding = diff.bind(opts.source, p.source.chain_ids(), opts.local_wal)
    jdir = JournalDir(diff.ns)
    snap, records = jdir.load()
    ns = Namespace(p.uid, p.gid, binding.base_time_ns, journal=jdir.append)
    if snap is not None:
        ns.load_snapshot(snap)
    else:
        ns.load_entries(p.source.entries(), root_mode=0o700)
    ns.root.uid, ns.root.gid = p.uid, p.gid
    replayed = ns.replay(records, log)
    settle_objects(ns, diff, p.source)
    removed = collect_garbage(ns, diff)
    fresh = snap is None and not records
    if fresh:
        # The first mount of this diff: shape the tree once, then persist it as a snapshot.
        if ns.root.children and "PG_VERSION" in ns.root.children:  # a data directory
            rec = opts.recovery
            apply_postgresql_conf(ns, diff, p.source, p.uid, p.gid, opts.postgresql_conf,
                                  rec.auto_conf_append if rec else b"")
            if rec is not None and (rec.create or rec.options):
                create_recovery_files(ns, diff, p.source, p.uid, p.gid, rec)
        if opts.local_wal:
            setup_local_wal(ns, diff, p.source, p.uid, p.gid)
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
    shm_name = segment_name(os.getpid(), uuid.uuid4().hex[:8])
    seg = Segment.create(shm_name, opts.workers, p.source.block_size)
    router = Router(opts.workers, opts.source, p.diff.objects, shm_name, opts.threads,
                    log=log_error,
                    log_format=opts.log_format, log_level=opts.log_level)
    vfs = Vfs(p.ns, router, p.diff.objects, p.journal, seg, p.diff.path, log=log_error)
    vfs.bs = p.source.block_size
    router.on_restart = vfs.worker_restarted
    ops = Operations(vfs, writeback=opts.writeback, entry_timeout=opts.entry_timeout,
                     attr_timeout=opts.attr_timeout)
    options = {"fsname=pbkfs", "subtype=pbkfs", "default_permissions"}
    if p.uid != os.geteuid():
        options.add("allow_other")
    mounted = False
    status = 0

    async def main() -> None:
        nonlocal mounted
        async with trio.open_nursery() as nursery:
            await router.start(nursery)
            try:
                pyfuse3.init(ops, mnt, options)
            except RuntimeError as exc:
                raise UsageError(f"mounting {mnt} failed ({exc}): check /dev/fuse and "
                                 "fusermount3") from None
            mounted = True
            ctl = control_path(mnt)
            os.makedirs(os.path.dirname(ctl), mode=0o700, exist_ok=True)
            write_record(RuntimeRecord(os.getpid(), mnt, p.diff.path, shm_name, router.pids(),
                                       ctl))
            nursery.start_soon(_signals, mnt)
            stats = MountStats(ops, vfs, router, p.diff.path)
            nursery.start_soon(control.serve, ctl, stats.answer)

            async def answering() -> None:
                # The kernel's INIT has been answered: the mount works, and the kernel has
                # set up its per-mount settings (which the INIT reply would overwrite).
                await ops.initialized.wait()
                await trio.sleep(0.05)
                if opts.tune_writeback:
                    tune_bdi(mnt)
                ready(None)
                log(f"mounted {describe_source(opts.source)} at {mnt} "
                    f"({opts.workers} workers, diff {p.diff.path})")

            nursery.start_soon(answering)
            try:
                await pyfuse3.main()
            finally:
                with trio.CancelScope(shield=True):
                    await router.shutdown()
                    await trio.to_thread.run_sync(p.journal.sync)
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
        seg.close()
        seg.unlink()
        remove_record(mnt)
        p.diff.unlock()
        p.source.close()
        log(f"unmounted {mnt}")
    return status


class MountStats:
    """What the control socket reports: requests, latencies, workers, the diff."""

    def __init__(self, ops: Operations, vfs: Vfs, router: Router, diff: str) -> None:
        self.ops = ops
        self.vfs = vfs
        self.router = router
        self.diff = diff
        self.started = time.time()
        self.since = time.time()

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("cmd", "stat") != "stat":
            return {"error": f"unknown command {request.get('cmd')!r}"}
        st = self.vfs.stats
        out: dict[str, Any] = {
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 1),
            "counters_since_s": round(time.time() - self.since, 1),
            "operations": {k: v.summary() for k, v in sorted(self.ops.latency.items())},
            "reads": {"frontend": st.reads_hot, "worker": st.reads_worker,
                      "bytes": st.bytes_read},
            "writes": {"count": st.writes, "bytes": st.bytes_written,
                       "queued_bytes": self.vfs.pending_bytes},
            "fsyncs": st.fsyncs,
            "journal_syncs": st.journal_syncs,
            "inodes": len(self.vfs.ns.inodes),
            "open_files": len(self.vfs.handles),
            "workers": [
                {"index": c.index, "pid": c.pid, "alive": c.alive, "in_flight": len(c.pending),
                 "sent": c.sent, "restarts": len(self.router.restarts[c.index])}
                for c in self.router.conns
            ],
            "diff_bytes": _allocated(os.path.join(self.diff, "objects")),
        }
        if request.get("reset"):
            self.ops.latency.clear()
            self.ops.counts.clear()
            self.vfs.stats.__init__()  # type: ignore[misc]
            for c in self.router.conns:
                c.sent = 0
            self.since = time.time()
        return out


def _allocated(path: str) -> int:
    total = 0
    try:
        with os.scandir(path) as it:
            for e in it:
                try:
                    total += e.stat(follow_symlinks=False).st_blocks * 512
                except OSError:
                    pass
    except OSError:
        pass
    return total


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (trio wraps errors of its tasks in groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def mount_device(mnt: str) -> str | None:
    """major:minor of the mount at `mnt`, from mountinfo (never stat our own mount)."""
    want = os.path.abspath(mnt)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4].encode().decode("unicode_escape") == want:
                return fields[2]
    return None


# read_ahead_kb: a sequential scan keeps several reads in flight, spread over the workers
# (reads of files never written are routed by chunk), so cold data decodes on every CPU.
BDI_SETTINGS = {"strict_limit": "0", "max_ratio": str(BDI_MAX_RATIO), "read_ahead_kb": "1024"}


def tune_bdi(mnt: str) -> None:
    """Let the kernel keep more dirty pages of this mount (root only; best effort).

    FUSE mounts start with strict_limit and max_ratio 1%: a writer past a few
    tens of MB of dirty pages is throttled and writeback runs constantly, one
    request per dirty page. PostgreSQL dirties its data files steadily between
    checkpoints, which then turns into a stream of small WRITEs and stalls.
    """
    dev = mount_device(mnt)
    if dev is None:
        return
    for name, value in BDI_SETTINGS.items():
        try:
            with open(f"/sys/class/bdi/{dev}/{name}", "w") as f:
                f.write(value)
        except OSError as exc:
            log(f"could not set {name}={value} for the mount's writeback ({exc.strerror})")
            return


def describe_source(spec: SourceSpec) -> str:
    if spec.kind == "plain":
        return f"directory {spec.path}"
    return f"backup {spec.backup_id} ({spec.instance})"


async def _signals(mnt: str) -> None:
    """SIGTERM/SIGINT: unmount like `pbkfs unmount` would (refused while busy)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
        async for sig in sigs:
            log(f"signal {signal.Signals(sig).name}: unmounting {mnt}")
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
    try:
        p = prepare(opts)
        if background:
            redirect_log(opts.log_file or p.diff.log)
    except PbkfsError as exc:
        ready(str(exc))
        return 2
    except OSError as exc:
        ready(f"{exc.filename or ''}: {os.strerror(exc.errno or errno.EIO)}")
        return 2
    return serve(opts, p, ready)


def main(argv: list[str]) -> int:
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
    from pbkfs.logsetup import setup_logging

    setup_logging(opts.log_format, opts.log_level)  # stderr: the diff's log once redirected
    return run(opts, ready, background)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
