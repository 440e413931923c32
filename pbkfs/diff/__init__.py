"""The diff directory on disk, where every change of a mount lives (layer 6 of 11).

Owns the binding and lock of a diff directory, the per-file objects (a data
file whose length is the logical size, and for backup files a block map with
a truncation horizon), the namespace journal and its snapshots, the
durability markers (--perf-unsafe, --no-wal), and the shared-memory copies of
the block maps that workers publish for the frontend. The on-disk ordering
rules it keeps are in docs/CONTRACT.md ("the diff on disk"). Imports the
view, catalog and codecs layers and the root modules; never fs, ipc, mount,
cli, trio or pyfuse3 (worker processes import it).
"""
