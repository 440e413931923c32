"""The per-mount kernel settings pbkfs makes through sysfs once the mount answers: more
FUSE background requests (fusectl) and a BDI that is not throttled like a slow device."""

from __future__ import annotations

import time
from pathlib import Path

from pbkfs.mount.kerneltune import BDI_SETTINGS, CONNECTION_SETTINGS, mount_device
from pbkfs.mount.runtime import read_record
from tests.support.mounting import mounted


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def test_connection_and_bdi_are_tuned_after_mount(work: Path, base: Path) -> None:
    mnt, diff = work / "mnt", work / "diff"
    with mounted(mnt, diff, plain=base):
        rec = read_record(str(mnt))
        assert rec is not None and rec.conn
        dev = mount_device(str(mnt))
        assert dev is not None
        want = {f"/sys/fs/fuse/connections/{rec.conn}/{k}": v
                for k, v in CONNECTION_SETTINGS.items()}
        want |= {f"/sys/class/bdi/{dev}/{k}": v for k, v in BDI_SETTINGS.items()}
        deadline = time.monotonic() + 30  # tuned right after `pbkfs mount` returned
        while {p: read(p) for p in want} != want:
            assert time.monotonic() < deadline, {p: read(p) for p in want}
            time.sleep(0.05)
