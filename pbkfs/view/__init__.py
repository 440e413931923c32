"""The logical view of a backup chain: what restore would write, read-only (layer 5 of 11).

Owns names, modes and sizes of the target backup's files and `read(path, off,
len)` returning exactly restore's bytes, with bounded caches of page indexes
and open files; `source` opens a view from a spec (catalog or plain
directory), `verify` reads every byte of a chain and checks it. Imports
catalog, walarchive, codecs and the root modules only.
"""

from pbkfs.view.chainview import ChainView, open_view
from pbkfs.view.entries import ViewEntry

__all__ = ["ChainView", "ViewEntry", "open_view"]
