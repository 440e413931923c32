"""Hostile catalog entries are refused by the reader: a listed symlink leaving the data
directory, an entry path escaping it (through a mount: tests/mount/test_security.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pbkfs.errors import PbkfsError
from pbkfs.view import open_view
from tests.support.catalog_edit import LEAVING, LINK_LINE, store_with_entry


@pytest.mark.parametrize(("path", "target"), LEAVING, ids=[f"{p}->{t}" for p, t in LEAVING])
def test_link_target_leaving_the_data_directory_is_corrupt(
    work: Path, fixtures_dir: Path, path: str, target: str
) -> None:
    """A listed symlink (`linked`) pointing outside the data directory would let writes
    through the mount land anywhere on the host: the reader refuses the backup."""
    store = store_with_entry(fixtures_dir, work / "store",
                             LINK_LINE.format(path=path, target=target))
    with pytest.raises(PbkfsError) as exc:
        view = open_view(store, "nochk", "TP2KCQ")
        view.close()
    assert path in str(exc.value)


def test_link_target_inside_the_data_directory_is_a_symlink(
    work: Path, fixtures_dir: Path
) -> None:
    """Control for the test above: the same entry with a target inside is served."""
    store = store_with_entry(fixtures_dir, work / "store",
                             LINK_LINE.format(path="base/good", target="../global"))
    view = open_view(store, "nochk", "TP2KCQ")
    try:
        e = view.entry("base/good")
        assert e is not None and e.kind == "l" and e.target == "../global"
    finally:
        view.close()


@pytest.mark.parametrize("path", ["../escape", "/abs", "base/../../escape", "base/./x"])
def test_entry_path_escaping_is_corrupt(work: Path, fixtures_dir: Path, path: str) -> None:
    line = LINK_LINE.format(path=path, target="x").replace(', "linked":"x"', "")
    line = line.replace('"mode":"41471"', '"mode":"33152"')
    store = store_with_entry(fixtures_dir, work / "store", line)
    with pytest.raises(PbkfsError) as exc:
        open_view(store, "nochk", "TP2KCQ").close()
    assert path in str(exc.value)
