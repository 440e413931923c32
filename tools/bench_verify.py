"""Benchmark: `pbkfs verify` throughput per codec beside the raw read speed of the same files.

    python -m tools.bench_verify [--fixtures DIR] [-j N] [--repeat R]

For each fixture backup chain it times (1) reading every stored file of the chain
raw (plain reads, no decoding: the disk/page-cache ceiling) and (2) `verify`
(CRC of every stored file + every logical byte decoded and checked). Both runs
follow a warm-up read so the page cache holds the files for both. Prints a
markdown table: logical MB/s of verify, raw MB/s, and the ratio.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from pbkfs.view import open_view
from pbkfs.view.verify import stored_work, verify_view

CASES = [
    ("pg15", "main", "TP2KB6", "none (FULL)"),
    ("pg15", "main", "TP2KCC", "zlib (FULL)"),
    ("pg15", "main", "TP2KBV", "pglz (PAGE on zlib/none)"),
    ("pg15", "nochk", "TP2KD0", "pglz (DELTA on zlib)"),
    ("pg15-bigrel", "big", "TP2ML7", "zlib-9 (2 GiB relation)"),
]


def raw_read(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while chunk := f.read(1 << 20):
                total += len(chunk)
    return total


@click.command()
@click.option("--fixtures", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".cache/fixtures"), show_default=True,
              help="Unpacked fixture sets (../shared/fixtures/unpack DIR).")
@click.option("-j", "--threads", "jobs", default=1, show_default=True)
@click.option("--repeat", default=3, show_default=True, help="Best of N runs.")
def main(fixtures: Path, jobs: int, repeat: int) -> None:
    """Measure verify MB/s per codec against raw reads of the same stored files."""
    print(f"cpus={os.cpu_count()} threads={jobs} best of {repeat}\n")
    print("| backup | codec | logical MB | stored MB | raw read MB/s (stored) "
          "| verify MB/s (logical) | verify s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for fixture, instance, backup_id, label in CASES:
        catalog = fixtures / fixture / "catalog"
        if not catalog.exists():
            continue
        view = open_view(catalog, instance, backup_id)
        paths = [Path(str(m.stored_path(e))) for m, e in stored_work(view)]
        raw_read(paths)  # warm the page cache
        raw_best = verify_best = float("inf")
        stored = logical = 0
        for _ in range(repeat):
            t0 = time.perf_counter()
            stored = raw_read(paths)
            raw_best = min(raw_best, time.perf_counter() - t0)
            fresh = open_view(catalog, instance, backup_id)  # cold page-index cache
            t0 = time.perf_counter()
            report = verify_view(fresh, jobs)
            verify_best = min(verify_best, time.perf_counter() - t0)
            fresh.close()
            assert report.ok, report.problems[:3]
            logical = report.logical_bytes
        view.close()
        print(f"| {instance}/{backup_id} | {label} | {logical / 1e6:.0f} | {stored / 1e6:.0f} | "
              f"{stored / 1e6 / raw_best:.0f} | {logical / 1e6 / verify_best:.0f} | "
              f"{verify_best:.2f} |")


if __name__ == "__main__":
    main()
