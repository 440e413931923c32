"""Where a live mount records itself so `pbkfs unmount -D MNT` can find its process."""

from __future__ import annotations

import hashlib
import os

import msgspec


class RuntimeRecord(msgspec.Struct):
    pid: int
    mountpoint: str
    diff: str
    shm: str
    workers: list[int]
    control: str = ""  # Unix socket answering `pbkfs stat` (pbkfs.mount.controlsocket)


def runtime_dir() -> str:
    if os.geteuid() == 0:
        return "/run/pbkfs"
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/pbkfs-{os.geteuid()}"
    return os.path.join(base, "pbkfs") if "XDG_RUNTIME_DIR" in os.environ else base


def record_path(mountpoint: str) -> str:
    # abspath, never realpath: resolving would stat the mount point, which can
    # hang on a mount whose process is stuck (or deadlock the process itself).
    key = hashlib.sha1(os.path.abspath(mountpoint).encode()).hexdigest()[:16]
    return os.path.join(runtime_dir(), f"{key}.json")


def control_path(mountpoint: str) -> str:
    return record_path(mountpoint)[: -len(".json")] + ".sock"


def write_record(rec: RuntimeRecord) -> None:
    path = record_path(rec.mountpoint)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(msgspec.json.encode(rec))
    os.rename(tmp, path)


def read_record(mountpoint: str) -> RuntimeRecord | None:
    try:
        with open(record_path(mountpoint), "rb") as f:
            return msgspec.json.decode(f.read(), type=RuntimeRecord)
    except (FileNotFoundError, msgspec.DecodeError):
        return None


def remove_record(mountpoint: str) -> None:
    try:
        os.unlink(record_path(mountpoint))
    except FileNotFoundError:
        pass
