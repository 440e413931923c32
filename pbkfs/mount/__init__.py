"""The mount process and its lifecycle (layer 10 of 11).

Owns everything that needs the kernel: the thin pyfuse3 adapter over
`pbkfs.fs.vfs`, starting a mount in the background or the foreground and
reporting when it answers, per-mount kernel tuning, the control socket and
the figures of `pbkfs stat`, runtime records under /run/pbkfs, unmount and
forced stop, and cleanup of a diff. Modules that only ask about mounts
(`checks`, `mountinfo`, `runtime`, `daemon`, `cleanup`, `options`) never load
pyfuse3. May import fs and everything below it; never cli.
"""
