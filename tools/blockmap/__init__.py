"""Block-map inspector: which backup each block of each file comes from, and what the diff holds.

`python -m tools.blockmap (--mount MNT | --diff DIFF) [--format text|json|svg|png] [PATH...]`

It reads a diff directory the way a mount does (binding, namespace snapshot and
journal, per-object block maps) without changing a byte of it, and on a live
mount takes the block maps from the mount's shared memory, where the workers
publish them as they change.
"""
