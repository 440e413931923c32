"""Pure logic: no processes, no FUSE, no PostgreSQL (real fixture catalogs are fine)."""
