"""What `pbkfs mount` hands the mount process: one JSON document (on its stdin), decoded here.

Kept apart from the mount process so the launcher (`pbkfs.mount.daemon`) can
build it without loading pyfuse3 or trio.
"""

from __future__ import annotations

import msgspec

from pbkfs.config import CACHE_TIMEOUT, REQUEST_TIMEOUT, CacheConfig, StoreConfig
from pbkfs.recovery.mountplan import MountRecovery
from pbkfs.view.source import SourceSpec


class MountOptions(msgspec.Struct):
    source: SourceSpec
    mountpoint: str
    diff: str
    workers: int
    owner: str | None = None
    # pg_wal in a plain directory of the diff: True, False (through the mount), or None:
    # the default (plain for a data directory's first mount; as bound for a diff made before)
    local_wal: bool | None = None
    writeback: bool = True
    threads: int = 8
    foreground: bool = False
    postgresql_conf: bool = True
    tune_writeback: bool = True
    entry_timeout: float = CACHE_TIMEOUT
    attr_timeout: float = CACHE_TIMEOUT
    request_timeout: float = REQUEST_TIMEOUT  # a worker silent this long is restarted
    caches: CacheConfig = msgspec.field(default_factory=CacheConfig)  # of every view opened
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)  # s3:// catalogs
    log_format: str = "text"
    log_level: str = "info"
    log_file: str = ""  # background mounts: default <diff>/pbkfs.log
    recovery: MountRecovery | None = None  # what a first mount adds for recovery
    perf_unsafe: bool = False  # fsync deferred to unmount; dirty marker (pbkfs.diff.durability)
    no_wal: bool = False  # pg_wal in a scratch directory; the diff is not resumable
    force: bool = False  # accept a dirty diff; let --idle-timeout/--ttl stop a busy mount
    idle_timeout: float = 0.0  # seconds without requests or open files before unmounting
    ttl: float = 0.0  # seconds after the start before unmounting, whatever happens
    remove_diff: bool = False  # an expired mount also removes its diff
    parent: str = ""  # --from: a new diff stacked on this unmounted one (pbkfs.diff.layers)
