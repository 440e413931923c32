"""Every helper and fixture shared by test modules: env (paths, require), fixtures (registered
by tests/conftest.py), mounting, postgres, pitr, trees, wal, catalog_edit, expected, ..."""
