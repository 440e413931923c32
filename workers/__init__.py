"""The worker process (`python -m workers SPEC_JSON`): owner of the diff objects of the
inodes that hash to it.

It reads requests from the mount process on stdin and answers on stdout, in
arrival order per inode (docs/CONTRACT.md, "worker replies"). Imports only
pbkfs.ipc.protocol, pbkfs.diff, pbkfs.view and the layers below them; never
trio, pyfuse3, the router, fs or mount (a worker must stay small).
"""
