"""Where a catalog's bytes come from (layer 2 of 11): a local directory or an object store.

One interface under the catalog, view and WAL-archive readers: a *location* is either a
`pathlib.Path` (a catalog on a local file system) or an `ObjectPath` (a catalog in an
S3-compatible bucket, `s3://BUCKET/PREFIX`). Both answer the same questions (exists,
is_dir, read_bytes, `/`), and the functions of `pbkfs.storage.location` list them, size
them and open them for ranged reads, so nothing above knows where the bytes come from.
Object-store reads go through a local cache shared by every process of the host
(`pbkfs.storage.chunkcache`). Imports codecs and the root modules only; never writes to
a store.
"""
