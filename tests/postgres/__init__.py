"""A real PostgreSQL 15, on a mount or not: every test here is marked `postgres`
(tests/postgres/conftest.py); the ones that mount are marked `mount` too."""
