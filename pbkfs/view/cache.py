"""Bounded caches for the logical view: page indexes and open file descriptors.

Opening a catalog must cost O(files) and reading must keep memory flat, so
per-file page indexes are built on first use and evicted by weight, and file
descriptors are kept in a small LRU whose entries are only closed when no
reader holds them (closing a descriptor another thread is reading would let a
reused fd number serve another file's bytes).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Generic, Protocol, TypeVar

from pbkfs.storage.location import Handle, Location, open_handle


class Weighted(Protocol):
    @property
    def weight(self) -> int: ...


V = TypeVar("V", bound=Weighted)


class WeightedLRU(Generic[V]):
    """LRU mapping whose total `weight` stays under `capacity` (one oversized item is kept)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()
        self.misses = 0

    def get_or_load(self, key: Hashable, load: Callable[[], V]) -> V:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                return item
            self.misses += 1
        item = load()  # outside the lock: loading reads and decompresses
        with self._lock:
            if key not in self._items:
                self._items[key] = item
                self._total += item.weight
                while self._total > self.capacity and len(self._items) > 1:
                    _, old = self._items.popitem(last=False)
                    self._total -= old.weight
        return item

    @property
    def total_weight(self) -> int:
        return self._total

    def __len__(self) -> int:
        return len(self._items)


class _Open:
    __slots__ = ("handle", "users", "closed")

    def __init__(self, handle: Handle) -> None:
        self.handle = handle
        self.users = 0
        self.closed = False


class FdCache:
    """Open stored backup files (descriptors, or object-store handles), at most `capacity`
    kept open idle."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._open: OrderedDict[Location, _Open] = OrderedDict()
        self._lock = threading.Lock()

    @contextmanager
    def open(self, path: Location) -> Iterator[Handle]:
        """Yield an open handle of `path` (its size, preads); backups are never written."""
        with self._lock:
            slot = self._open.get(path)
            if slot is not None:
                self._open.move_to_end(path)
                slot.users += 1
        if slot is None:
            slot = _Open(open_handle(path))
            slot.users = 1
            with self._lock:
                existing = self._open.get(path)
                if existing is not None:  # another thread opened it meanwhile
                    slot.handle.close()
                    existing.users += 1
                    slot = existing
                else:
                    self._open[path] = slot
                    self._evict()
        try:
            yield slot.handle
        finally:
            with self._lock:
                slot.users -= 1
                if slot.closed and slot.users == 0:
                    slot.handle.close()

    def _evict(self) -> None:
        while len(self._open) > self.capacity:
            _, old = self._open.popitem(last=False)
            old.closed = True
            if old.users == 0:
                old.handle.close()

    def close(self) -> None:
        with self._lock:
            for slot in self._open.values():
                slot.closed = True
                if slot.users == 0:
                    slot.handle.close()
            self._open.clear()

