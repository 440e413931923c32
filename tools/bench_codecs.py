"""Per-page cost of the page codecs on real pg_probackup pages (prints a markdown table).

    python -m tools.bench_codecs [--fixtures DIR] [--passes N]

Pages come from the pg15 fixture set: the FULL uncompressed backup (raw pages, also the input of
the checksum and compression rows), the FULL zlib backup and the PAGE pglz backup. Each row is the
best of N passes over all its pages (the pure-Python rows use a sample), divided per page: the
number a mount pays on the first read of a stored block.
"""

from __future__ import annotations

import json
import os
import platform
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import click

from pbkfs.codecs import pagecheck, pglz

BLCKSZ = 8192
RELSEG_SIZE = 131072
REPO = Path(__file__).resolve().parent.parent
DEFAULT_FIXTURES = Path(os.environ.get("PBKFS_FIXTURE_CACHE", REPO / ".cache" / "fixtures"))
BACKUPS = {
    "none": "pg15/catalog/backups/main/TP2KB6",
    "zlib": "pg15/catalog/backups/main/TP2KCC",
    "pglz": "pg15/catalog/backups/main/TP2KBV",
}


def stored_payloads(backup_dir: Path) -> Iterator[tuple[int, bytes]]:
    """(absolute block, stored payload) of every page stream record of a backup."""
    with open(backup_dir / "backup_content.control") as fh:
        entries = [json.loads(line) for line in fh]
    for e in entries:
        if e["is_datafile"] != "1" or int(e["size"]) <= 0:
            continue
        data = (backup_dir / "database" / e["path"]).read_bytes()
        base = int(e["segno"]) * RELSEG_SIZE
        off = 0
        while off < len(data):
            block, size = struct.unpack_from("<Ii", data, off)
            yield base + block, data[off + 8 : off + 8 + size]
            off += 8 + size


def best_per_page_us(fn: Callable[[bytes], object], items: list[bytes], passes: int) -> float:
    """Best-of-`passes` wall time of one pass over `items`, per item, in microseconds."""
    best = float("inf")
    for _ in range(passes):
        t0 = time.perf_counter_ns()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter_ns() - t0)
    return best / len(items) / 1000.0


def sample(items: list[bytes], n: int) -> list[bytes]:
    step = max(1, len(items) // n)
    return items[::step][:n]


def ensure_fixtures(fixtures: Path) -> None:
    if (fixtures / BACKUPS["pglz"]).is_dir():
        return
    unpack = REPO.parent / "shared" / "fixtures" / "unpack"
    if not unpack.exists():
        raise click.UsageError(f"no fixtures at {fixtures} and no unpack script at {unpack}")
    fixtures.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(unpack), str(fixtures)], check=True)


@click.command()
@click.option(
    "--fixtures",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_FIXTURES,
    show_default=True,
    help="Directory with the unpacked fixture sets (unpacked there if missing).",
)
@click.option("--passes", default=5, show_default=True, help="Timed passes per row (best counts).")
@click.option("--python-sample", default=60, show_default=True, help="Pages for pure-Python rows.")
def main(fixtures: Path, passes: int, python_sample: int) -> None:
    """Print per-page decode / checksum / compress timings as a markdown table."""
    ensure_fixtures(fixtures)
    pairs = list(stored_payloads(fixtures / BACKUPS["none"]))
    raw = [p for _, p in pairs]
    zpay = [p for _, p in stored_payloads(fixtures / BACKUPS["zlib"]) if len(p) < BLCKSZ]
    ppay = [p for _, p in stored_payloads(fixtures / BACKUPS["pglz"]) if len(p) < BLCKSZ]
    by_page = {id(p): b for b, p in pairs}  # absolute block of each raw page
    nonzero = [p for p in raw if not pagecheck.is_zero_page(p)]

    def decode_none(p: bytes) -> bytes:
        # what a reader does with a raw record: copy the 8 KiB out of the stream buffer
        return bytes(memoryview(p)[:BLCKSZ])

    rows: list[tuple[str, int, float, str]] = []

    def row(name: str, fn: Callable[[bytes], object], items: list[bytes], note: str = "") -> None:
        rows.append((name, len(items), best_per_page_us(fn, items, passes), note))

    ratio_z = sum(map(len, zpay)) / (len(zpay) * BLCKSZ)
    ratio_p = sum(map(len, ppay)) / (len(ppay) * BLCKSZ)
    row("decode none (copy 8 KiB)", decode_none, raw)
    row("decode zlib (`zlib.decompress`)", zlib.decompress, zpay, f"stored at {ratio_z:.0%}")
    row("decode pglz, C", lambda p: pglz.decompress(p, BLCKSZ), ppay, f"stored at {ratio_p:.0%}")
    py = sample(ppay, python_sample)
    row("decode pglz, pure Python", lambda p: pglz.decompress_reference(p, BLCKSZ), py)
    row(
        "checksum, C",
        lambda p: pagecheck.page_checksum(p, by_page[id(p)]),
        raw,
    )
    row(
        "checksum, pure Python",
        lambda p: pagecheck.page_checksum_reference(p, by_page[id(p)]),
        sample(raw, python_sample),
    )
    row(
        "check_page (header + checksum), C",
        lambda p: pagecheck.check_page(
            p, by_page[id(p)], checksums_enabled=True, expected_checksum=None
        ),
        raw,
    )
    row("compress pglz, C (default strategy)", pglz.compress, nonzero)
    row(
        "compress pglz, C (always, as pg_probackup)",
        lambda p: pglz.compress(p, strategy="always"),
        nonzero,
    )
    row(
        "compress pglz, pure Python (default)",
        pglz.compress_reference,
        sample(nonzero, max(1, python_sample // 6)),
    )

    cpu = platform.processor() or platform.machine()
    click.echo(
        f"Per 8 KiB page, best of {passes} passes; Python {platform.python_version()}, "
        f"{cpu}, {os.cpu_count()} CPUs; pages from the pg15 fixtures."
    )
    click.echo("")
    click.echo("| operation | pages | µs / page | MB/s | note |")
    click.echo("|---|---:|---:|---:|---|")
    for name, count, us, note in rows:
        mbps = BLCKSZ / us  # bytes per µs == MB/s
        click.echo(f"| {name} | {count} | {us:.2f} | {mbps:,.0f} | {note} |")


if __name__ == "__main__":
    main()
