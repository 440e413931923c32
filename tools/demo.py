"""`make demo`: show what pbkfs does on a real backup catalog.

Until a mount is available in this build, the demo lists and verifies the real pg_probackup
catalogs that ship with the test fixtures.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = (REPO / ".." / "shared" / "fixtures").resolve()


def run(*args: str) -> None:
    print(f"\n$ {' '.join(args)}", flush=True)
    subprocess.run(args, check=True)


def main() -> int:
    cache = REPO / ".cache" / "fixtures"
    subprocess.run([sys.executable, str(FIXTURES / "unpack"), str(cache), "pg15"], check=True,
                   capture_output=True)
    catalog = str(cache / "pg15" / "catalog")
    pbkfs = str(REPO / ".venv" / "bin" / "pbkfs")
    run(pbkfs, "show", "-B", catalog)
    run(pbkfs, "verify", "-B", catalog, "--instance", "main", "-i", "TP2KC3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
