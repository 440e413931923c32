"""The `pbkfs` console script: starts the mount process of `pbkfs mount` before anything
else loads (pbkfs.mount.launch), then runs the click command line (pbkfs.cli.main)."""

from __future__ import annotations

import sys


def main() -> None:
    from pbkfs.mount.launch import start_early

    start_early(sys.argv[1:])
    from pbkfs.cli.main import main as run

    run()


if __name__ == "__main__":
    main()
