"""pbkfs: a pg_probackup backup chain as a live, writable PostgreSQL data directory."""

__version__ = "0.1.0"

# The newest pg_probackup release whose catalog format this reader knows.
SUPPORTED_PROGRAM_VERSION = "2.5.16"
