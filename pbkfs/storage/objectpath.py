"""A path inside an object-store catalog that reads like `pathlib.Path`.

The catalog readers were written against `pathlib.Path`: `/`, `name`, `parent`,
`exists()`, `is_dir()`, `is_file()`, `read_bytes()`, `read_text()`. An ObjectPath
answers the same, from its store's listings and reads, so those readers work unchanged
on `s3://` catalogs; `str()` is the object's URL, which is what errors name.
"""

from __future__ import annotations

from pbkfs.storage.objectstore import BucketStore, Meta, store_for


class ObjectPath:
    __slots__ = ("store", "rel")

    def __init__(self, store: BucketStore, rel: str = "") -> None:
        self.store = store
        self.rel = rel.strip("/")

    @classmethod
    def from_url(cls, url: str) -> ObjectPath:
        return cls(store_for(url))

    def __truediv__(self, name: str) -> ObjectPath:
        name = str(name).strip("/")
        return ObjectPath(self.store, f"{self.rel}/{name}" if self.rel else name)

    def __str__(self) -> str:
        return self.store.where(self.rel)

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ObjectPath) and other.store is self.store
                and other.rel == self.rel)

    def __hash__(self) -> int:
        return hash((id(self.store), self.rel))

    @property
    def name(self) -> str:
        return self.rel.rsplit("/", 1)[-1]

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.store, self.rel.rpartition("/")[0])

    def meta(self) -> Meta | None:
        return self.store.meta(self.rel) if self.rel else None

    def is_file(self) -> bool:
        return self.meta() is not None

    def is_dir(self) -> bool:
        return self.store.is_dir(self.rel)

    def exists(self) -> bool:
        return self.is_dir() or self.is_file()

    def listdir(self) -> list[str]:
        listing = self.store.listing(self.rel)
        return sorted(listing.dirs | set(listing.files))

    def read_bytes(self) -> bytes:
        return self.store.read_all(self.rel)

    def read_text(self) -> str:
        return self.read_bytes().decode()
