"""Real FUSE mounts, no PostgreSQL: every test here is marked `mount` (tests/mount/conftest.py)."""
