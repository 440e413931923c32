"""Reading a pg_probackup catalog, exactly and read-only (layer 3 of 11).

Owns the parsing of everything pg_probackup writes: `key = value` files,
backup.control, backup_content.control, page_header_map, pg_control, the
instances and backups of a store, and resolving and validating a backup's
chain. It never opens a catalog file for writing. Imports only pbkfs.codecs
and the root modules (errors, config, fsutil).
"""
