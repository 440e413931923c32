"""FIFOs, Unix sockets and names that are not UTF-8 through a real FUSE mount, and after a
remount (clean, and after kill -9 with the journal replayed).

mkfifo and bind() reach the file system as MKNOD; opening the FIFO or connecting to the
socket is the kernel's business (the FS only keeps the name and the mode). A name is any
bytes but '/' and NUL. Device nodes stay refused (EPERM).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.env import REPO
from tests.support.mounting import kill9_mount, mount, mounted, unmount

pytestmark = pytest.mark.timeout(300)  # nothing here may hang on a broken mount


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """(mount point, diff, base): a plain base mounted; unmounted afterwards, whatever
    happened (the test remounts it itself)."""
    base = tmp_path / "base"
    (base / "dir").mkdir(parents=True)
    (base / "dir" / "file").write_bytes(b"content\n" * 1000)
    mnt, diff = tmp_path / "mnt", tmp_path / "diff"
    with mounted(mnt, diff, plain=base):
        yield mnt, diff, base


def remount(mnt: Path, diff: Path, base: Path) -> None:
    unmount(mnt, diff)
    mount(mnt, diff, plain=base)


def fifo_carries(path: Path) -> None:
    """Bytes written into the FIFO come out of it (non-blocking opens: never hangs)."""
    r = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        w = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(w, b"through the fifo")
        finally:
            os.close(w)
        assert os.read(r, 100) == b"through the fifo"
    finally:
        os.close(r)


def serve(path: Path) -> socket.socket:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.settimeout(30)
    srv.bind(os.fspath(path))
    srv.listen(4)
    return srv


def talk(srv: socket.socket, path: Path) -> None:
    """One round trip over the socket file `path` to the listener `srv`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as cli:
        cli.settimeout(30)
        cli.connect(os.fspath(path))
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(30)
            cli.sendall(b"ping")
            assert conn.recv(4) == b"ping"
            conn.sendall(b"pong")
            assert cli.recv(4) == b"pong"


def types_in_readdir(d: Path) -> dict[str, str]:
    """Type letters as `find -printf %y` gives them from the directory listing."""
    proc = subprocess.run(["find", os.fspath(d), "-mindepth", "1", "-maxdepth", "1",
                           "-printf", "%y %f\\n"], capture_output=True, text=True,
                          timeout=60, check=True)
    pairs = (line.split(" ", 1) for line in proc.stdout.splitlines())
    return {name: kind for kind, name in pairs}


def test_fifo_and_socket_nodes(env: tuple[Path, Path, Path]) -> None:
    mnt, diff, base = env
    os.mkfifo(mnt / "fifo", 0o640)
    st = os.lstat(mnt / "fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_size == 0
    fifo_carries(mnt / "fifo")
    os.mkfifo(mnt / "dir" / "gone")
    os.unlink(mnt / "dir" / "gone")
    assert not os.path.lexists(mnt / "dir" / "gone")

    with serve(mnt / "sock") as srv:
        assert stat.S_ISSOCK(os.lstat(mnt / "sock").st_mode)
        talk(srv, mnt / "sock")
        os.rename(mnt / "sock", mnt / "dir" / "sock2")  # the socket is its inode, not its name
        talk(srv, mnt / "dir" / "sock2")
    os.rename(mnt / "fifo", mnt / "dir" / "fifo2")
    fifo_carries(mnt / "dir" / "fifo2")
    assert types_in_readdir(mnt / "dir") == {"file": "f", "fifo2": "p", "sock2": "s"}

    for kind in (stat.S_IFCHR, stat.S_IFBLK):
        with pytest.raises(PermissionError) as exc:
            os.mknod(mnt / "dev", kind | 0o600, os.makedev(1, 3))
        assert exc.value.errno == errno.EPERM
    assert not os.path.lexists(mnt / "dev")

    remount(mnt, diff, base)  # clean: from the snapshot written at unmount
    st = os.lstat(mnt / "dir" / "fifo2")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert stat.S_ISSOCK(os.lstat(mnt / "dir" / "sock2").st_mode)
    assert types_in_readdir(mnt / "dir") == {"file": "f", "fifo2": "p", "sock2": "s"}
    fifo_carries(mnt / "dir" / "fifo2")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as cli:  # nobody listens now
        with pytest.raises(ConnectionRefusedError):
            cli.connect(os.fspath(mnt / "dir" / "sock2"))
    os.unlink(mnt / "dir" / "sock2")  # what a server does with a stale socket file
    with serve(mnt / "dir" / "sock2") as srv:
        talk(srv, mnt / "dir" / "sock2")
    os.unlink(mnt / "dir" / "sock2")

    os.mkfifo(mnt / "late")
    dfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)  # the journal record is durable
    os.close(dfd)
    kill9_mount(diff)
    remount(mnt, diff, base)  # the journal is replayed
    assert stat.S_ISFIFO(os.lstat(mnt / "late").st_mode)
    assert sorted(os.listdir(mnt / "dir")) == ["fifo2", "file"]


BAD = b"caf\xe9-\xff"  # not UTF-8


def test_names_that_are_not_utf8(env: tuple[Path, Path, Path]) -> None:
    mnt, diff, base = env
    root = os.fsencode(mnt)

    def at(*parts: bytes) -> bytes:
        return b"/".join([root, *parts])

    fd = os.open(at(BAD), os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, b"payload")
    os.fsync(fd)
    os.close(fd)
    assert BAD in os.listdir(root)
    assert os.stat(at(BAD)).st_size == 7
    os.mkdir(at(b"d\xfe"))
    os.rename(at(BAD), at(b"d\xfe", b"moved\xff"))
    os.symlink(b"../target\xc3", at(b"d\xfe", b"sym\xfd"))
    os.mkfifo(at(b"d\xfe", b"fifo\xfc"))
    with open(at(b"gone\xff"), "wb") as f:
        f.write(b"x")
    os.unlink(at(b"gone\xff"))
    with open(at(b"dir", b"file"), "r+b") as rw:  # a backup file, renamed to a byte name
        rw.write(b"CHANGED\n")
    os.rename(at(b"dir", b"file"), at(b"dir", b"file\xff"))
    want = sorted([b"d\xfe", b"dir"])
    assert sorted(os.listdir(root)) == want
    inside = [b"fifo\xfc", b"moved\xff", b"sym\xfd"]
    assert sorted(os.listdir(at(b"d\xfe"))) == inside

    def check() -> None:
        assert sorted(os.listdir(root)) == want
        assert sorted(os.listdir(at(b"d\xfe"))) == inside
        with open(at(b"d\xfe", b"moved\xff"), "rb") as f:
            assert f.read() == b"payload"
        assert os.readlink(at(b"d\xfe", b"sym\xfd")) == b"../target\xc3"
        assert stat.S_ISFIFO(os.lstat(at(b"d\xfe", b"fifo\xfc")).st_mode)
        with open(at(b"dir", b"file\xff"), "rb") as f:
            assert f.read() == b"CHANGED\n" + b"content\n" * 999

    check()
    remount(mnt, diff, base)  # clean: the snapshot
    check()
    dfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)
    kill9_mount(diff)
    remount(mnt, diff, base)  # journal replay (nothing new), then a new snapshot
    check()

    for fmt in ("text", "json"):  # the inspector shows such names, escaped
        proc = subprocess.run([sys.executable, "-m", "tools.blockmap", "--mount",
                               os.fspath(mnt), "--format", fmt], cwd=REPO, capture_output=True,
                              timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        out = proc.stdout.decode("utf-8")  # valid UTF-8 whatever the names
        if fmt == "json":
            files = {f["path"]: f for f in json.loads(out)["files"]}
            assert files["d\\xfe/moved\\xff"]["kind"] == "new"
            assert files["dir/file\\xff"]["renamed_from"] == "dir/file"
        else:
            assert "d\\xfe/moved\\xff" in out and "dir/file\\xff" in out

    os.rename(at(b"d\xfe", b"moved\xff"), at(b"back\xff"))
    os.unlink(at(b"d\xfe", b"sym\xfd"))
    os.unlink(at(b"d\xfe", b"fifo\xfc"))
    os.rmdir(at(b"d\xfe"))
    remount(mnt, diff, base)
    assert sorted(os.listdir(root)) == sorted([b"back\xff", b"dir"])
    with open(at(b"back\xff"), "rb") as back:
        assert back.read() == b"payload"
