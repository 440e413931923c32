"""`pbkfs show --archive`: the WAL archive per timeline, as `pg_probackup show --archive` shows it.

Same JSON keys and order, same text table (pg_probackup 2.5.16). Timelines
holding no full segment (only history, partial or backup files) are left
out, newest timeline first, as there.
"""

from __future__ import annotations

import struct
from typing import Any

from pbkfs.catalog.lsn import format_lsn
from pbkfs.catalog.store import Instance, Store
from pbkfs.cli.showinfo import backup_record, pretty_size
from pbkfs.walarchive.archive import WalArchive
from pbkfs.walarchive.names import segment_name
from pbkfs.walarchive.timelines import Timeline, archive_timelines


def _f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def zratio(seg_size: int, tl: Timeline) -> float:
    """Uncompressed/stored size ratio, computed in single precision like pg_probackup."""
    if tl.size == 0:
        return 0.0
    return _f32(_f32(float(seg_size) * tl.n_segments) / _f32(float(tl.size)))


def shown_timelines(instance: Instance) -> tuple[WalArchive, list[Timeline]]:
    archive = WalArchive.for_instance(instance)
    timelines = [t for t in archive_timelines(archive, instance) if t.n_segments > 0]
    return archive, list(reversed(timelines))


def timeline_record(tl: Timeline, instance: Instance, seg_size: int) -> dict[str, Any]:
    """One timeline as `pg_probackup show --archive --format=json` prints it."""
    return {
        "tli": tl.tli,
        "parent-tli": tl.parent_tli,
        "switchpoint": format_lsn(tl.switchpoint),
        "min-segno": segment_name(tl.tli, tl.begin_segno, seg_size),
        "max-segno": segment_name(tl.tli, tl.end_segno, seg_size),
        "n-segments": tl.n_segments,
        "size": tl.size,
        "zratio": float(f"{zratio(seg_size, tl):.2f}"),
        "closest-backup-id": tl.closest_backup.id if tl.closest_backup else "",
        "status": tl.status,
        "lost-segments": [
            {"begin-segno": segment_name(r.tli, r.begin, seg_size),
             "end-segno": segment_name(r.tli, r.end, seg_size)}
            for r in tl.lost
        ],
        "backups": [backup_record(b, instance) for b in tl.backups],
    }


def _instances(store: Store, instance_name: str | None) -> list[Instance]:
    if instance_name:
        return [store.instance(instance_name)]
    return list(store.instances.values())


def show_archive_json(store: Store, instance_name: str | None) -> list[dict[str, Any]]:
    out = []
    for inst in _instances(store, instance_name):
        archive, timelines = shown_timelines(inst)
        out.append({"instance": inst.name,
                    "timelines": [timeline_record(t, inst, archive.seg_size) for t in timelines]})
    return out


HEADER = ["TLI", "Parent TLI", "Switchpoint", "Min Segno", "Max Segno", "N segments", "Size",
          "Zratio", "N backups", "Status"]


def timeline_row(tl: Timeline, seg_size: int) -> list[str]:
    return [
        str(tl.tli), str(tl.parent_tli), format_lsn(tl.switchpoint),
        segment_name(tl.tli, tl.begin_segno, seg_size),
        segment_name(tl.tli, tl.end_segno, seg_size),
        str(tl.n_segments), pretty_size(tl.size), f"{zratio(seg_size, tl):.2f}",
        str(len(tl.backups)), tl.status,
    ]


def show_archive_text(store: Store, instance_name: str | None) -> str:
    """The text pg_probackup prints, byte for byte (each cell left-aligned, one space around)."""
    out = []
    for inst in _instances(store, instance_name):
        archive, timelines = shown_timelines(inst)
        rows = [timeline_row(t, archive.seg_size) for t in timelines]
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(HEADER)]
        line = "=" * sum(w + 2 for w in widths)

        def fmt(cells: list[str], widths: list[int] = widths) -> str:
            return "".join(f" {c.ljust(w)} " for c, w in zip(cells, widths, strict=True))

        out.append(f"\nARCHIVE INSTANCE '{inst.name}'\n{line}\n{fmt(HEADER)}\n{line}\n")
        out += [fmt(r) + "\n" for r in rows]
    return "".join(out)
