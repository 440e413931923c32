"""Branches (`pbkfs mount --from DIFF`): layered diffs over real FUSE mounts.

A model of every file is kept beside the mounts: each layer changes it (writes
across block edges, truncates that cut and then extend, creations, removals,
renames), and every mount of every layer must read exactly the model's state
at that layer, also after a remount and with the page cache dropped.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path

import pytest

from tests.support.mounting import is_mounted, kill9_mount, mount_pids, mounted, pbkfs

BS = 8192
Model = dict[str, bytes]


def drop_caches() -> None:
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def read_tree(mnt: Path) -> Model:
    out: Model = {}
    for root, _dirs, files in os.walk(mnt):
        for name in files:
            p = Path(root) / name
            out[str(p.relative_to(mnt))] = p.read_bytes()
    return out


def assert_tree(mnt: Path, model: Model, what: str) -> None:
    seen = read_tree(mnt)
    assert sorted(seen) == sorted(model), what
    for name, data in model.items():
        got = seen[name]
        if got != data:
            first = next((i for i, (a, b) in enumerate(zip(got, data, strict=False)) if a != b),
                         min(len(got), len(data)))
            raise AssertionError(f"{what}: {name} differs at byte {first} "
                                 f"(block {first // BS}); size {len(got)} vs {len(data)}")


def change(mnt: Path, model: Model, rng: random.Random, layer: int) -> None:
    """A few random changes made both through the mount and to the model."""
    for step in range(6):
        files = sorted(model)
        op = rng.choice(["write", "write", "truncate", "create", "remove", "rename"])
        if op == "write" and files:
            name = rng.choice(files)
            data = bytearray(model[name])
            off = rng.randrange(0, len(data) + 3 * BS)
            chunk = rng.randbytes(rng.choice([1, 100, BS, BS + 17, 5 * BS]))
            if off > len(data):
                data.extend(bytes(off - len(data)))
            data[off:off + len(chunk)] = chunk
            with open(mnt / name, "r+b") as f:
                f.seek(off)
                f.write(chunk)
            model[name] = bytes(data)
        elif op == "truncate" and files:
            name = rng.choice(files)
            size = rng.choice([0, rng.randrange(0, 4 * BS), len(model[name]) // 2,
                               len(model[name]) + rng.randrange(1, 3 * BS)])
            os.truncate(mnt / name, size)
            old = model[name]
            model[name] = old[:size] + bytes(max(0, size - len(old)))
        elif op == "create":
            name = f"new-{layer}-{step}"
            made = rng.randbytes(rng.randrange(0, 3 * BS))
            (mnt / name).write_bytes(made)
            model[name] = made
        elif op == "remove" and len(files) > 2:
            name = rng.choice(files)
            os.unlink(mnt / name)
            del model[name]
        elif op == "rename" and files:
            name = rng.choice(files)
            new = f"renamed-{layer}-{step}"
            os.rename(mnt / name, mnt / new)
            model[new] = model.pop(name)


@pytest.fixture
def big_base(base: Path) -> Path:
    rng = random.Random(7)
    (base / "big").write_bytes(rng.randbytes(40 * BS + 123))
    (base / "dir" / "small").write_bytes(b"small file")
    return base


def test_a_chain_of_ten_branches_reads_each_layer_as_it_was(work: Path, big_base: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"branch model seed {seed}")
    rng = random.Random(seed)
    mnt = work / "mnt"
    model = read_tree(big_base)
    states: list[Model] = []
    diffs = [work / f"layer{i}" for i in range(10)]
    for i, diff in enumerate(diffs):
        how: dict[str, object] = ({"plain": big_base} if i == 0
                                  else {"extra": ["--from", str(diffs[i - 1])]})
        with mounted(mnt, diff, **how):  # type: ignore[arg-type]
            assert_tree(mnt, model, f"layer {i} at its start (seed {seed})")
            # the truncate-then-extend trap: cut below the parent's data, then grow again
            if i % 3 == 1 and "big" in model:
                os.truncate(mnt / "big", 3 * BS + 5)
                os.truncate(mnt / "big", 9 * BS)
                model["big"] = model["big"][: 3 * BS + 5].ljust(9 * BS, b"\0")
            change(mnt, model, rng, i)
            assert_tree(mnt, model, f"layer {i} after its changes (seed {seed})")
        states.append(dict(model))
    drop_caches()
    # every layer, read again through a fresh branch stacked on it (many children per parent)
    for i in (0, 4, 9):
        probe = work / f"probe{i}"
        with mounted(mnt, probe, extra=["--from", str(diffs[i])]):
            assert_tree(mnt, states[i], f"a branch of layer {i} (seed {seed})")
        assert pbkfs("cleanup", "-d", str(probe)).returncode == 0
    # the newest layer remounted without --from: its binding names its layers
    with mounted(mnt, diffs[9]):
        assert_tree(mnt, states[9], f"layer 9 remounted (seed {seed})")
        listed = json.loads(pbkfs("list", "--format", "json").stdout)
        mine = [m for m in listed if m["mountpoint"] == str(mnt)]
        assert mine and mine[0]["parents"] == [str(d) for d in reversed(diffs[:9])]


def test_siblings_and_the_parent_never_see_each_others_changes(work: Path, base: Path) -> None:
    mnt, parent, a, b = work / "mnt", work / "parent", work / "a", work / "b"
    with mounted(mnt, parent, plain=base):
        (mnt / "dir" / "file").write_bytes(b"parent")
    with mounted(mnt, a, extra=["--from", str(parent)]):
        assert (mnt / "dir" / "file").read_bytes() == b"parent"
        (mnt / "dir" / "file").write_bytes(b"branch a")
        (mnt / "only-a").write_bytes(b"a")
    with mounted(mnt, b, extra=["--from", str(parent)]):
        assert (mnt / "dir" / "file").read_bytes() == b"parent"
        assert not (mnt / "only-a").exists()
        (mnt / "dir" / "file").write_bytes(b"branch b")
    with mounted(mnt, a):
        assert (mnt / "dir" / "file").read_bytes() == b"branch a"
    listed = json.loads(pbkfs("list", "--diffs", str(work), "--format", "json").stdout)
    by_diff = {d["diff"]: d for d in listed}
    assert by_diff[str(parent)]["children"] == sorted([str(a), str(b)])
    assert by_diff[str(a)]["parent"] == str(parent) and by_diff[str(parent)]["parent"] is None
    for child in (a, b):
        assert pbkfs("cleanup", "-d", str(child)).returncode == 0
    with mounted(mnt, parent):  # no branches left: writable again, as it was
        assert (mnt / "dir" / "file").read_bytes() == b"parent"


def test_a_parent_is_refused_naming_its_branches(work: Path, base: Path) -> None:
    mnt, mnt2, parent, child = work / "mnt", work / "mnt2", work / "parent", work / "child"
    mnt2.mkdir()
    with mounted(mnt, parent, plain=base):
        (mnt / "x").write_bytes(b"x")
        refused = pbkfs("mount", "-D", str(mnt2), "-d", str(child), "--from", str(parent),
                        check=False)
        assert refused.returncode != 0 and "mounted" in refused.stderr, refused.stderr
        assert not is_mounted(mnt2)
    assert not (child / "binding.json").exists()
    with mounted(mnt, child, extra=["--from", str(parent)]):
        (mnt / "y").write_bytes(b"y")
        # while the branch is mounted its parent is held: not even cleanup gets in
        for args in (["mount", "-D", str(mnt2), "-d", str(parent)],
                     ["cleanup", "-d", str(parent)], ["reset", "-d", str(parent)]):
            proc = pbkfs(*args, check=False)
            assert proc.returncode != 0 and str(child) in proc.stderr, (args, proc.stderr)
            assert not is_mounted(mnt2)
    for args in (["mount", "-D", str(mnt2), "-d", str(parent)],
                 ["cleanup", "-d", str(parent)], ["reset", "-d", str(parent)]):
        proc = pbkfs(*args, check=False)
        assert proc.returncode != 0, args
        assert f"parent of 1 branch(es) ({child})" in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert (parent / "binding.json").exists() and (child / "binding.json").exists()
    # --from the diff itself, or a diff that already exists, or with a source: refused
    for args, needle in (
        (["-d", str(child), "--from", str(child)], "already holds a diff"),
        (["-d", str(work / "new"), "--from", str(work / "nothing")], "not a pbkfs diff"),
        (["-d", str(work / "new"), "--from", str(parent), "--plain-base", str(base),
          "--local-wal"], "pg_wal layout"),  # the parent's WAL goes through its mount
    ):
        proc = pbkfs("mount", "-D", str(mnt2), *args, check=False)
        if is_mounted(mnt2):
            pbkfs("unmount", "-D", str(mnt2), check=False)
        assert proc.returncode != 0 and needle in proc.stderr, (args, proc.stderr)


def test_reset_of_a_branch_returns_to_its_parent(work: Path, base: Path) -> None:
    mnt, parent, child = work / "mnt", work / "parent", work / "child"
    with mounted(mnt, parent, plain=base):
        (mnt / "p").write_bytes(b"from the parent")
    with mounted(mnt, child, extra=["--from", str(parent)]):
        (mnt / "p").write_bytes(b"changed in the branch")
        (mnt / "c").write_bytes(b"c")
        pids = mount_pids(child)
        assert pids
    assert pbkfs("reset", "-d", str(child)).returncode == 0
    with mounted(mnt, child):
        assert (mnt / "p").read_bytes() == b"from the parent"
        assert not (mnt / "c").exists()
    assert pbkfs("cleanup", "-d", str(child)).returncode == 0
    assert not any((parent / "children").iterdir()), "the wiped branch left its entry"


def test_branch_creation_does_not_copy_the_parent(work: Path, base: Path) -> None:
    """The branch's own diff holds none of the parent's data, whatever its size."""
    mnt, parent, child = work / "mnt", work / "parent", work / "child"
    with mounted(mnt, parent, plain=base):
        with open(mnt / "large", "wb") as f:
            for _ in range(64):
                f.write(os.urandom(1 << 20))
    with mounted(mnt, child, extra=["--from", str(parent)]):
        assert os.path.getsize(mnt / "large") == 64 << 20
    used = sum(p.stat().st_blocks * 512 for p in (child / "objects").rglob("*"))
    assert used < 1 << 20, f"the branch's objects hold {used} bytes"


def test_a_branch_of_a_killed_mount_sees_what_its_remount_sees(work: Path, big_base: Path
                                                                ) -> None:
    """The parent's mount is killed -9 in the middle of writes: a branch of it reads the
    same tree as the parent's own next mount does (both take what reached its disk)."""
    mnt, parent, child = work / "mnt", work / "parent", work / "child"
    rng = random.Random(11)
    with mounted(mnt, parent, plain=big_base):
        fd = os.open(mnt / "big", os.O_RDWR)
        try:
            for i in range(200):
                os.pwrite(fd, rng.randbytes(BS), rng.randrange(0, 60) * BS)
                if i == 100:
                    os.fsync(fd)
            (mnt / "created").write_bytes(b"made before the kill")
            kill9_mount(parent)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
        pbkfs("unmount", "-D", str(mnt), check=False)  # the dead endpoint goes
    with mounted(mnt, child, extra=["--from", str(parent)]):
        seen_by_branch = read_tree(mnt)
    assert pbkfs("cleanup", "-d", str(child)).returncode == 0
    drop_caches()
    with mounted(mnt, parent):
        assert_tree(mnt, seen_by_branch, "the parent's remount vs its branch")


def test_a_parent_left_dirty_by_perf_unsafe_needs_force(work: Path, base: Path) -> None:
    mnt, parent, child = work / "mnt", work / "parent", work / "child"
    with mounted(mnt, parent, plain=base, extra=["--perf-unsafe"]):
        (mnt / "x").write_bytes(b"x")
        kill9_mount(parent)  # never unmounted cleanly: the dirty marker stays
        pbkfs("unmount", "-D", str(mnt), check=False)
    mnt.mkdir(exist_ok=True)
    proc = pbkfs("mount", "-D", str(mnt), "-d", str(child), "--from", str(parent),
                 check=False)
    assert proc.returncode != 0 and "--perf-unsafe" in proc.stderr, proc.stderr
    assert not is_mounted(mnt)
    assert not (child / "binding.json").exists()
    with mounted(mnt, child, extra=["--from", str(parent), "--force"]):
        assert (mnt / "dir" / "file").read_bytes() == base.joinpath("dir", "file").read_bytes()
