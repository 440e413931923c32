"""Layered diffs without a mount: references, the starting tree, reads through layers."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbkfs.diff import journal as J
from pbkfs.diff.directory import Binding, DiffDir
from pbkfs.diff.layers import (
    Layers,
    ancestors,
    as_layer,
    branch_binding,
    layer_ref,
    live_children,
    parse_ref,
)
from pbkfs.diff.objects import ObjectStore
from pbkfs.errors import CorruptionError, UsageError
from pbkfs.view.source import SourceSpec
from tests.support.fakebase import FakeBase, fake_base

BS = 8192


class StackedBase:
    """What Source does for a branch: "/"-paths go to the layers, others to the backup."""

    def __init__(self, backup: FakeBase, layers: Layers) -> None:
        self.backup, self.layers = backup, layers

    def read(self, path: str, offset: int, length: int) -> bytes:
        if path.startswith("/"):
            return self.layers.read(path, offset, length, self)
        return self.backup.read(path, offset, length)

    def base_size(self, path: str) -> int:
        if path.startswith("/"):
            return self.layers.size(path)
        return self.backup.base_size(path)


def test_references_never_look_like_backup_paths() -> None:
    assert parse_ref(layer_ref(3, 17)) == (3, 17, False)
    assert parse_ref(layer_ref(3, 17, whole=True)) == (3, 17, True)
    assert parse_ref("base/5/1259") is None
    assert parse_ref("layer/1/2") is None  # a relative path, as a backup's would be


def test_a_layer_tree_reads_through_its_objects() -> None:
    nodes = [
        J.SnapNode(0, "d", 0o700, 0, 0, 0, None, None, "", 0),
        J.SnapNode(1, "f", 0o600, 0, 0, 0, "base/1/1", 4, "", 10),  # changed in the layer
        J.SnapNode(2, "f", 0o600, 0, 0, 0, "base/1/2", None, "", 20),  # untouched
        J.SnapNode(3, "f", 0o600, 0, 0, 0, None, 5, "", 30),  # made in the layer
    ]
    snap = J.Snapshot(4, 6, nodes, [("", 0), ("a", 1), ("b", 2), ("c", 3)])
    out = as_layer(snap, 2)
    assert [(n.origin, n.fid, n.size) for n in out.nodes] == [
        (None, None, 0), ("/layer/2/4", None, 10), ("base/1/2", None, 20),
        ("/layer/2/5/data", None, 30)]
    assert out.names == snap.names and out.generation == 0


ops = st.lists(
    st.tuples(
        st.sampled_from(["write", "truncate"]),
        st.integers(0, 8 * BS),
        st.integers(1, 3 * BS),
        st.integers(0, 255),
    ),
    min_size=1, max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(layers=st.lists(ops, min_size=1, max_size=6), fresh=st.booleans())
def test_a_stack_of_object_stores_reads_like_one_file(tmp_path_factory: pytest.TempPathFactory,
                                                      layers: list[list[tuple[str, int, int,
                                                                              int]]],
                                                      fresh: bool) -> None:
    """Each layer writes and truncates one file over the layer below; every layer's
    object, read through the stack, equals a plain bytes model (truncate-then-extend
    reads zeros, never older bytes)."""
    root = tmp_path_factory.mktemp("stack")
    backup = fake_base()
    model = bytearray() if fresh else bytearray(backup.files["rel"])
    origin: str | None = None if fresh else "rel"
    dirs: list[str] = []
    for depth, layer_ops in enumerate(layers, 1):
        objects = root / f"layer{depth}"
        objects.mkdir()
        stack = StackedBase(backup, Layers(list(dirs), BS))
        store = ObjectStore(str(objects), stack, BS)
        for op, off, n, byte in layer_ops:
            if op == "write":
                store.write(1, origin, off, bytes([byte]) * n)
                if off > len(model):
                    model.extend(bytes(off - len(model)))
                model[off:off + n] = bytes([byte]) * n
            else:
                store.truncate(1, origin, off)
                del model[off:]
                model.extend(bytes(off - len(model)))
            assert store.read(1, origin, 0, len(model) + BS) == bytes(model)
        store.fsync(1, datasync=True)
        store.close_all()
        dirs.append(str(objects))
        origin = layer_ref(depth, 1, whole=origin is None)
        above = StackedBase(backup, Layers(list(dirs), BS))
        assert above.base_size(origin) == len(model)
        assert above.read(origin, 0, len(model)) == bytes(model)
        above.layers.close()


def test_a_lost_file_of_a_layer_is_an_error_never_other_bytes(tmp_path: Path) -> None:
    """A layer's map gone (or damaged) must not read as "nothing in the diff": the
    backup's bytes would come back in place of the layer's."""
    backup = fake_base()
    objects = tmp_path / "layer1"
    objects.mkdir()
    store = ObjectStore(str(objects), backup, BS)
    store.write(1, "rel", BS, b"\x01" * BS)
    store.fsync(1, datasync=True)
    store.close_all()
    (objects / "1.map").unlink()
    stack = StackedBase(backup, Layers([str(objects)], BS))
    with pytest.raises(CorruptionError, match="1.map"):
        stack.read(layer_ref(1, 1), 0, 2 * BS)
    (objects / "1").unlink()
    with pytest.raises(CorruptionError):
        StackedBase(backup, Layers([str(objects)], BS)).read(layer_ref(1, 1, whole=True), 0, 1)


def _bind(diff: DiffDir, parent: str = "") -> None:
    diff.create()
    b = Binding(SourceSpec("plain", path="/nonexistent"), [], "t", 0, parent=parent)
    diff_path = Path(diff.binding_path)
    diff_path.write_bytes(msgspec.json.encode(b))


def test_children_are_those_bound_to_the_parent(tmp_path: Path) -> None:
    parent = DiffDir(str(tmp_path / "p"))
    _bind(parent)
    a, b = DiffDir(str(tmp_path / "a")), DiffDir(str(tmp_path / "b"))
    a.create()
    b.create()
    branch_binding(a, parent)
    branch_binding(b, parent)
    assert live_children(parent) == sorted([a.path, b.path])
    assert [d.path for d, _ in ancestors(b, b.read_binding())] == [parent.path]  # type: ignore[arg-type]
    Path(b.binding_path).unlink()  # a branch wiped by hand: its entry counts for nothing
    assert live_children(parent) == [a.path]
    with pytest.raises(UsageError, match="already holds a diff"):
        branch_binding(a, parent)


def test_a_loop_of_parents_is_a_clear_error(tmp_path: Path) -> None:
    x, y = DiffDir(str(tmp_path / "x")), DiffDir(str(tmp_path / "y"))
    _bind(x, parent=y.path)
    _bind(y, parent=x.path)
    with pytest.raises(UsageError, match="loop"):
        ancestors(x, x.read_binding())  # type: ignore[arg-type]
    gone = DiffDir(str(tmp_path / "orphan"))
    _bind(gone, parent=str(tmp_path / "deleted"))
    with pytest.raises(UsageError, match="no longer a pbkfs diff"):
        ancestors(gone, gone.read_binding())  # type: ignore[arg-type]
