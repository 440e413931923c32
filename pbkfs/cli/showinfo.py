"""`pbkfs show`: the backup list with pg_probackup's field names and text layout."""

from __future__ import annotations

from typing import Any

from pbkfs.catalog.control import BackupControl, parse_time
from pbkfs.catalog.lsn import format_lsn
from pbkfs.catalog.store import Backup, Instance, Store
from pbkfs.view.rewrite import parse_tablespace_map

INT_FIELDS = ("data-bytes", "wal-bytes", "uncompressed-bytes", "pgdata-bytes")
OPTIONAL_TEXT = ("note", "expire-time", "merge-time", "merge-dest-id", "external-dirs")


def backup_record(backup: Backup, instance: Instance) -> dict[str, Any]:
    """One backup as `pg_probackup show --format=json` prints it (same keys, same order)."""
    if not backup.readable:
        return {"id": backup.id, "status": "UNKNOWN", "error": str(backup.control_or_error)}
    c = backup.control
    raw = c.raw
    rec: dict[str, Any] = {"id": backup.id}
    if c.parent_backup_id:
        rec["parent-backup-id"] = c.parent_backup_id
    rec["backup-mode"] = c.backup_mode
    rec["wal"] = "STREAM" if c.stream else "ARCHIVE"
    rec["compress-alg"] = c.compress_alg
    rec["compress-level"] = c.compress_level
    rec["from-replica"] = "true" if c.from_replica else "false"
    rec["block-size"] = c.block_size
    rec["xlog-block-size"] = c.xlog_block_size
    rec["checksum-version"] = c.checksum_version
    rec["program-version"] = c.program_version
    rec["server-version"] = c.server_version
    rec["current-tli"] = c.timeline
    rec["parent-tli"] = _parent_tli(c, instance)
    rec["start-lsn"] = format_lsn(c.start_lsn)
    rec["stop-lsn"] = format_lsn(c.stop_lsn)
    rec["start-time"] = c.start_time
    for key in ("end-time",):
        if c.end_time:
            rec[key] = c.end_time
    if c.recovery_xid is not None:
        rec["recovery-xid"] = c.recovery_xid
    if c.recovery_time:
        rec["recovery-time"] = c.recovery_time
    for key in OPTIONAL_TEXT[1:3]:
        if key in raw:
            rec[key] = raw[key]
    for key in INT_FIELDS:
        if key in raw:
            try:
                rec[key] = int(raw[key])
            except ValueError:
                rec[key] = raw[key]
    if "primary-conninfo" in raw:
        rec["primary_conninfo"] = raw["primary-conninfo"]
    for key in ("external-dirs", "note"):
        if key in raw:
            rec[key] = raw[key]
    rec["status"] = c.status
    if c.content_crc:
        rec["content-crc"] = c.content_crc
    tablespaces = _tablespace_map(backup)
    if tablespaces:
        rec["tablespace_map"] = tablespaces
    return rec


def _tablespace_map(backup: Backup) -> list[dict[str, str]]:
    """The backup's own tablespace_map as pg_probackup shows it: [{oid, path}]."""
    try:
        content = (backup.database_dir / "tablespace_map").read_bytes()
    except OSError:
        return []
    return [{"oid": oid, "path": path} for oid, path in parse_tablespace_map(content).items()]


def _parent_tli(c: BackupControl, instance: Instance) -> int:
    if not c.parent_backup_id:
        return 0
    parent = instance.backups.get(c.parent_backup_id)
    if parent is None or not parent.readable:
        return 0
    return parent.control.timeline


def show_json(store: Store, instance_name: str | None) -> list[dict[str, Any]]:
    instances = [store.instance(instance_name)] if instance_name else list(
        store.instances.values())
    return [
        {"instance": inst.name, "backups": [backup_record(b, inst) for b in inst.newest_first()]}
        for inst in instances
    ]


def pretty_size(size: int) -> str:
    """pg_probackup's pretty_size: B below 10 kB, then kB/MB/GB/TB with half rounding."""
    if size < 0:
        return "----"
    limit = 10 * 1024
    limit2 = limit * 2 - 1
    if size < limit:
        return f"{size}B"
    size >>= 9
    for unit in ("kB", "MB", "GB"):
        if size < limit2:
            return f"{(size + (size > 0)) // 2}{unit}"
        size >>= 10
    return f"{(size + (size > 0)) // 2}TB"


def chain_text(backup: Backup, instance: Instance) -> str:
    """`FULL <- ... <- this` by id, or where the chain breaks."""
    ids: list[str] = []
    current: Backup | None = backup
    seen: set[str] = set()
    while current is not None and current.id not in seen:
        seen.add(current.id)
        ids.append(current.id)
        if not current.readable:
            ids.append("?")
            break
        parent_id = current.control.parent_backup_id
        if not parent_id:
            break
        current = instance.backups.get(parent_id)
        if current is None:
            ids.append(f"{parent_id}(missing)")
    return " <- ".join(reversed(ids))


def text_rows(instance: Instance) -> list[list[str]]:
    rows = []
    for b in instance.newest_first():
        rec = backup_record(b, instance)
        if "backup-mode" not in rec:
            rows.append([instance.name, "", b.id, "", "", "", "", "", "", "", "", "", "",
                         rec["status"], chain_text(b, instance)])
            continue
        try:
            span = int((parse_time(rec["end-time"]) - parse_time(rec["start-time"]))
                       .total_seconds())
            duration = f"{span}s"
        except (KeyError, ValueError):
            duration = "----"
        data = rec.get("data-bytes", -1)
        unc = rec.get("uncompressed-bytes", -1)
        zratio = f"{unc / data:.2f}" if isinstance(data, int) and data > 0 and \
            isinstance(unc, int) and unc > 0 else "1.00"
        rows.append([
            instance.name, rec["server-version"], b.id, rec.get("recovery-time", "----"),
            rec["backup-mode"], rec["wal"], f"{rec['current-tli']}/{rec['parent-tli']}",
            duration, pretty_size(data if isinstance(data, int) else -1),
            pretty_size(rec.get("wal-bytes", -1)), zratio, rec["start-lsn"], rec["stop-lsn"],
            rec["status"], chain_text(b, instance),
        ])
    return rows


HEADER = ["Instance", "Version", "ID", "Recovery Time", "Mode", "WAL Mode", "TLI", "Time", "Data",
          "WAL", "Zratio", "Start LSN", "Stop LSN", "Status", "Chain"]
RIGHT = {"Time", "Data", "WAL", "Zratio"}


def show_text(store: Store, instance_name: str | None) -> str:
    instances = [store.instance(instance_name)] if instance_name else list(
        store.instances.values())
    out = []
    for inst in instances:
        rows = text_rows(inst)
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(HEADER)]

        def fmt(cells: list[str], widths: list[int] = widths) -> str:
            return " " + "  ".join(
                c.rjust(w) if HEADER[i] in RIGHT else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " "

        line = "=" * len(fmt(HEADER))
        out += ["", f"BACKUP INSTANCE '{inst.name}'", line, fmt(HEADER), line]
        out += [fmt(r) for r in rows]
    return "\n".join(out[1:]) + "\n"
