"""mkbackup: write pg_probackup-format (2.5.16) backups of a running PostgreSQL 15.

pg_probackup itself cannot be installed everywhere pbkfs is tested, yet the mount
must be exercised on backups of any size. This package makes them with
pg_probackup's own command grammar (`init`, `add-instance`, `backup -b FULL|DELTA
--stream`) and writes every catalog file the way pg_probackup 2.5.16 does, so the
result is a catalog pg_probackup itself would accept.
"""
