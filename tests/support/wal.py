"""WAL segments and archives for tests: synthetic segments, writable copies of the
pg15-archive archive, and one with a lost segment and more timelines."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from pbkfs.catalog.store import Store
from pbkfs.walarchive.names import segment_name
from pbkfs.walarchive.segment import LONG_HEADER

SEG = 1 << 20
SYSID = 7712182100339188872  # pg15-archive's system identifier
PG15_MAGIC = 0xD110


def make_segment(tli: int, segno: int, *, header_tli: int | None = None, seg_size: int = SEG,
                 sysid: int = SYSID, magic: int = PG15_MAGIC, info: int = 0x0006,
                 blcksz: int = 8192) -> bytes:
    """A segment-sized buffer whose first page carries a valid long page header."""
    header = LONG_HEADER.pack(magic, info, header_tli or tli, segno * seg_size, 0, sysid,
                              seg_size, blcksz)
    return header + bytes(seg_size - len(header))


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1)


def archive_copy(fixtures_dir: Path, dest: Path, fixture: str = "pg15-archive",
                 instance: str = "arch") -> Path:
    """A catalog whose backups are the fixture's (linked) and whose WAL archive is a copy."""
    src = fixtures_dir / fixture / "catalog"
    dest.mkdir(parents=True)
    (dest / "backups").symlink_to(src / "backups")
    shutil.copytree(src / "wal", dest / "wal")
    return dest


def multi_timeline_archive(fixtures_dir: Path, root: Path) -> Store:
    """pg15-archive's archive with segment 19 lost and a timeline 2 forked at 0/1C00000."""
    catalog = archive_copy(fixtures_dir, root)
    wal = catalog / "wal" / "arch"
    (wal / "000000010000000000000019.gz").unlink()
    (wal / "00000002.history").write_text("1\t0/1C00000\tno recovery target specified\n")
    for segno in (0x1C, 0x1D, 0x1E):
        (wal / f"{segment_name(2, segno, SEG)}.gz").write_bytes(gz(make_segment(2, segno)))
    (wal / "00000003.history").write_text("1\t0/1C00000\tx\n2\t0/1E80000\ty\n")
    (wal / "000000030000000000000020.gz.part").write_bytes(b"in progress")
    (wal / "000000010000000000000022.partial").write_bytes(make_segment(1, 0x22))
    return Store(catalog)
