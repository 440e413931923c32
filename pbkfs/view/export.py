"""Writing a view out as a plain data directory (what restore would produce).

Used by tests and tools to start PostgreSQL on a backup without a mount.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from pbkfs.view.chainview import ChainView
from pbkfs.view.entries import ViewEntry

CHUNK = 1 << 20


def iter_content(view: ChainView, entry: ViewEntry, chunk: int = CHUNK) -> Iterator[bytes]:
    """The content of a file entry in chunks (aligned to blocks for datafiles)."""
    chunk -= chunk % view.block_size
    for offset in range(0, entry.size, chunk):
        yield view.read(entry.path, offset, chunk)


def export_tree(view: ChainView, dest: str | os.PathLike[str]) -> None:
    """Write every entry of `view` under `dest` (which must not exist or be empty)."""
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    dirs: list[ViewEntry] = []
    for entry in view.entries():
        target = root / entry.path
        if entry.kind == "d":
            target.mkdir(mode=0o700)
            dirs.append(entry)
        elif entry.kind == "l":
            os.symlink(entry.target, target)
        else:
            with open(target, "wb") as f:
                for part in iter_content(view, entry):
                    f.write(part)
            os.chmod(target, entry.mode)
    for entry in reversed(dirs):
        os.chmod(root / entry.path, entry.mode)
    os.chmod(root, 0o700)
