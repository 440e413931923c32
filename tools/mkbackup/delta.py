"""The parent of an incremental backup, and what its file list says.

Like pg_probackup, the parent is not chosen by the user: it is the newest
backup of the instance whose whole chain down to a FULL is usable (status OK
or DONE), on the same timeline. Its file list must pass its content-crc.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pbkfs.catalog.ids import decode_id
from pbkfs.catalog.lsn import parse_lsn
from pbkfs.codecs.crc import crc32c
from pbkfs.errors import ChainError, PbkfsError
from tools.mkbackup.catalogfiles import parse_content_line, parse_key_values
from tools.mkbackup.nondata import PrevFile

USABLE = ("OK", "DONE")


@dataclass
class ParentBackup:
    backup_id: str
    start_time: int
    start_lsn: int
    timeline: int
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # path -> fields

    def prev_file(self, path: str) -> PrevFile | None:
        """The parent's record of a regular file at `path` (None when absent)."""
        e = self.files.get(path)
        if e is None:
            return None
        size = int(e.get("size", "0"))
        full = int(e["full_size"]) if "full_size" in e else size
        return PrevFile(size=size, full_size=full, crc=int(e.get("crc", "0")))

    def has(self, path: str) -> bool:
        return path in self.files


def _controls(instance_dir: Path) -> dict[str, dict[str, str]]:
    out = {}
    for d in sorted(instance_dir.iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        try:
            out[d.name] = parse_key_values(d / "backup.control")
        except PbkfsError:
            continue  # unreadable: exists but is not usable
    return out


def _chain_problem(bid: str, controls: dict[str, dict[str, str]]) -> str | None:
    """Why the chain ending at `bid` is unusable, or None."""
    seen = set()
    cur: str | None = bid
    while cur is not None:
        if cur in seen:
            return f"parent chain of {bid} has a cycle at {cur}"
        seen.add(cur)
        ctl = controls.get(cur)
        if ctl is None:
            return f"backup {cur} (in the chain of {bid}) is missing"
        if ctl.get("status", "").upper() not in USABLE:
            return f"backup {cur} (in the chain of {bid}) has status {ctl.get('status')}"
        if ctl.get("backup-mode", "").upper() == "FULL":
            return None
        cur = ctl.get("parent-backup-id") or None
        if cur is None:
            return f"incremental backup {bid} has no parent-backup-id"
    return None


def find_parent(instance_dir: Path, timeline: int, block_size: int) -> ParentBackup:
    """The newest usable backup to base a DELTA on; ChainError saying why there is none."""
    controls = _controls(instance_dir)
    problems = []
    for bid in sorted(controls, key=lambda b: decode_id(b) if b.isalnum() else -1, reverse=True):
        ctl = controls[bid]
        problem = _chain_problem(bid, controls)
        if problem is None and int(ctl.get("timelineid", "0")) != timeline:
            problem = f"backup {bid} is on timeline {ctl.get('timelineid')}, server on {timeline}"
        if problem is None and int(ctl.get("block-size", "8192")) != block_size:
            problem = f"backup {bid} has block size {ctl.get('block-size')}"
        if problem:
            problems.append(problem)
            continue
        return load_parent(instance_dir / bid, ctl)
    detail = "; ".join(problems[:3]) if problems else "the instance has no backups"
    raise ChainError(
        "-", instance_dir,
        f"no valid parent for an incremental backup ({detail}); take a FULL backup first",
    )


def load_parent(backup_dir: Path, ctl: dict[str, str]) -> ParentBackup:
    """Read the parent's file list, checking its content-crc."""
    bid = backup_dir.name
    path = backup_dir / "backup_content.control"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ChainError(bid, path, f"parent's file list is unreadable: {exc.strerror}") from None
    want = int(ctl.get("content-crc", "0"))
    if want and crc32c(raw) != want:
        raise ChainError(bid, path, "parent's file list does not match its content-crc")
    files: dict[str, dict[str, str]] = {}
    for line in raw.decode(errors="surrogateescape").splitlines():
        fields = parse_content_line(line)
        if "path" in fields and fields.get("external_dir_num", "0") == "0":
            files[fields["path"]] = fields
    try:
        return ParentBackup(
            backup_id=bid,
            start_time=decode_id(bid),
            start_lsn=parse_lsn(ctl["start-lsn"]),
            timeline=int(ctl.get("timelineid", "0")),
            files=files,
        )
    except (KeyError, ValueError) as exc:
        raise ChainError(bid, backup_dir / "backup.control", f"bad field: {exc}") from None
