"""The file system without FUSE: what every request means (layer 9 of 11).

Owns the namespace (inode numbers, names merged from the backup's file list
and the journal, whiteouts, renames), `Vfs` (every file-system operation with
errno in `FsError`, routing content to workers), the first mount's shaping
of the tree, and settling a diff after a crash before anything is served.
Runs in the mount process, on its trio loop (docs/CONTRACT.md, "the frontend
between two awaits"). Imports ipc, diff, recovery, view and below; never
pyfuse3, mount or cli, so all of it is tested without a mount.
"""
