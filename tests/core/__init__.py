"""The FUSE-free core with real processes: Vfs + Router with workers, CLI runs that don't mount."""
