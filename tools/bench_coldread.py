"""Cold reads of a backup's pages through the view: microseconds per 8 KiB page.

    .venv/bin/python -m tools.bench_coldread --catalog DIR --instance NAME --backup-id ID
        [--mb 200] [--chunk-kb 352] [--rounds 3] [--baseline-tree DIR]

Reads the largest datafile of the backup from its start, in reads of --chunk-kb (the size
a worker gets from the kernel's read-ahead), through `Source.read` as a worker does: every
page decoded and checked; the stored file is in the OS cache after the first round, so
this is the CPU a cold read costs pbkfs, not the disk. With --baseline-tree, the same in a
process running the pbkfs of another checkout, alternated round by round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from pbkfs.view.source import SourceSpec, open_source
catalog, instance, backup_id, mb, chunk = sys.argv[2:7]
s = open_source(SourceSpec("catalog", store=catalog, instance=instance, backup_id=backup_id))
big = max((e for e in s.entries() if e.kind == "f"), key=lambda e: e.size)
total = min(big.size, int(mb) << 20)
step = int(chunk) << 10
t0 = time.perf_counter()
n = 0
for off in range(0, total, step):
    n += len(s.read(big.path, off, step))
dt = time.perf_counter() - t0
print(json.dumps({"path": big.path, "bytes": n, "us_per_page": dt * 1e6 / (n / 8192)}))
"""


def measure(tree: Path, args: argparse.Namespace) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(tree), args.catalog, args.instance,
                          args.backup_id, str(args.mb), str(args.chunk_kb)],
                         capture_output=True, text=True, check=True, timeout=3600, cwd=tree)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--instance", default="main")
    ap.add_argument("--backup-id", required=True)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--chunk-kb", type=int, default=352)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline-tree", type=Path)
    args = ap.parse_args()
    trees = {"this tree": REPO}
    if args.baseline_tree:
        trees["baseline " + args.baseline_tree.name] = args.baseline_tree.resolve()
    results: dict[str, list[float]] = {label: [] for label in trees}
    path = ""
    for _ in range(args.rounds + 1):  # the first round warms the OS cache, not counted
        for label, tree in trees.items():
            r = measure(tree, args)
            path = str(r["path"])
            results[label].append(float(r["us_per_page"]))  # type: ignore[arg-type]
    print(f"{path}, {args.mb} MB in reads of {args.chunk_kb} KiB, median of {args.rounds}")
    print("| pbkfs | µs per page (rounds) |")
    print("| --- | --- |")
    for label, values in results.items():
        kept = values[1:]
        print(f"| {label} | {statistics.median(kept):.1f} "
              f"({' / '.join(f'{v:.1f}' for v in kept)}) |")


if __name__ == "__main__":
    main()
