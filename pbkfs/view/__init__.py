"""The logical view of a backup chain (what restore would write), read-only."""

from pbkfs.view.chainview import ChainView, open_view
from pbkfs.view.entries import ViewEntry

__all__ = ["ChainView", "ViewEntry", "open_view"]
