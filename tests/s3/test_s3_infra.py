"""The S3 test infrastructure itself: the SeaweedFS server, the fault proxy, tools.s3sync.

Faults are checked as a raw HTTP client sees them (http.client or a bare socket), so a test
of a pbkfs S3 client can trust that "503" is a 503 and "truncate" a body cut short.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import obstore
import pytest
from obstore.store import S3Store

from tests.support.env import REPO
from tests.support.s3proxy import FaultProxy
from tests.support.s3server import HOST, S3Server, sign_v4
from tools.s3sync import sync_dir

pytestmark = pytest.mark.timeout(90)

NO_RETRY: Any = {"max_retries": 0, "retry_timeout": timedelta(seconds=5)}
QUICK_RETRY: Any = {"max_retries": 20, "retry_timeout": timedelta(seconds=30),
                    "backoff": {"init_backoff": timedelta(milliseconds=5),
                                "max_backoff": timedelta(milliseconds=50), "base": 2}}


def store(s3: S3Server, bucket: str, endpoint: str | None = None,
          retry: Any = NO_RETRY) -> S3Store:
    return S3Store(bucket, **s3.store_kwargs(endpoint), retry_config=retry)


def put(s3: S3Server, bucket: str, key: str, data: bytes) -> None:
    obstore.put(store(s3, bucket), key, data)


def signed_get(s3: S3Server, proxy: FaultProxy, path: str) -> bytes:
    """The bytes of a signed GET of `path` as sent to (and signed for) the proxy."""
    headers = sign_v4("GET", f"{HOST}:{proxy.port}", path, b"", s3.access_key,
                      s3.secret_key, s3.region)
    lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode()


def http_get(conn: http.client.HTTPConnection, s3: S3Server, proxy: FaultProxy,
             path: str) -> http.client.HTTPResponse:
    headers = sign_v4("GET", f"{HOST}:{proxy.port}", path, b"", s3.access_key,
                      s3.secret_key, s3.region)
    conn.request("GET", path, headers=headers)
    return conn.getresponse()


def raw_exchange(s3: S3Server, proxy: FaultProxy, path: str) -> tuple[bytes, BaseException | None]:
    """(bytes received until the proxy closed, the error that ended the read if any)."""
    with socket.create_connection((HOST, proxy.port), timeout=10) as sock:
        sock.sendall(signed_get(s3, proxy, path))
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except OSError as e:
            return got, e
        return got, None


def raw_exchange_keepalive(s3: S3Server, proxy: FaultProxy,
                           path: str) -> tuple[bytes, BaseException | None]:
    conn = http.client.HTTPConnection(HOST, proxy.port, timeout=10)
    try:
        return http_get(conn, s3, proxy, path).read(), None
    except OSError as e:
        return b"", e
    finally:
        conn.close()


def only_fault(proxy: FaultProxy, kind: str) -> None:
    proxy.faults = {kind}
    proxy.fail_rate = 1.0


# -- (a) credentials ---------------------------------------------------------------------

def test_credentials_are_checked(s3_server: S3Server, bucket: str) -> None:
    assert s3_server.request("GET", "/")[0] == 200
    status, body = s3_server.request("GET", "/", secret_key="not-the-secret")
    assert status == 403 and b"SignatureDoesNotMatch" in body
    conn = http.client.HTTPConnection(HOST, s3_server.port, timeout=10)
    try:
        conn.request("GET", f"/{bucket}")
        anonymous = conn.getresponse()
        assert anonymous.status == 403, anonymous.read()
    finally:
        conn.close()
    wrong = S3Store(bucket, **{**s3_server.store_kwargs(), "secret_access_key": "nope"},
                    retry_config=NO_RETRY)
    with pytest.raises(Exception, match="SignatureDoesNotMatch|403"):
        obstore.put(wrong, "k", b"data")


def test_env_points_clients_at_the_server(s3_server: S3Server) -> None:
    env = s3_server.env()
    assert env == {"AWS_ENDPOINT_URL": s3_server.endpoint,
                   "AWS_ACCESS_KEY_ID": s3_server.access_key,
                   "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
                   "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
    assert s3_server.endpoint == f"http://127.0.0.1:{s3_server.port}"


# -- (b) put / get, direct and through the proxy -----------------------------------------

@pytest.mark.parametrize("via", ["direct", "proxy"])
def test_put_get(s3_server: S3Server, fault_proxy: FaultProxy, bucket: str, via: str) -> None:
    endpoint = fault_proxy.endpoint if via == "proxy" else None
    st = store(s3_server, bucket, endpoint)
    big = os.urandom(6 * 1024 * 1024 + 17)  # above obstore's 5 MiB part size: multipart
    obstore.put(st, "dir/big", big)
    obstore.put(st, "dir/small", b"0123456789")
    obstore.put(st, "empty", b"")
    assert bytes(obstore.get(st, "dir/big").bytes()) == big
    assert bytes(obstore.get_range(st, "dir/big", start=4096, length=8192)) == big[4096:12288]
    assert [bytes(b) for b in obstore.get_ranges(st, "dir/small", starts=[0, 7], ends=[2, 10])] \
        == [b"01", b"789"]
    assert bytes(obstore.get(st, "empty").bytes()) == b""
    assert obstore.head(st, "dir/big")["size"] == len(big)
    listed = {o["path"]: o["size"] for batch in obstore.list(st) for o in batch}
    assert listed == {"dir/big": len(big), "dir/small": 10, "empty": 0}
    assert (fault_proxy.requests > 0) == (via == "proxy")
    assert fault_proxy.faulted == 0


def test_missing_bucket_is_an_error(s3_server: S3Server) -> None:
    """No bucket is made on upload (SeaweedFS would by default): as AWS."""
    with pytest.raises(Exception, match="NoSuchBucket"):
        obstore.put(store(s3_server, "no-such-bucket-here"), "k", b"x")


# -- (c) every fault as a raw client sees it ---------------------------------------------

@pytest.mark.parametrize("kind,code", [("503", "SlowDown"), ("500", "InternalError")])
def test_error_status_keeps_the_connection(s3_server: S3Server, fault_proxy: FaultProxy,
                                           bucket: str, kind: str, code: str) -> None:
    put(s3_server, bucket, "obj", b"payload")
    conn = http.client.HTTPConnection(HOST, fault_proxy.port, timeout=10)
    try:
        only_fault(fault_proxy, kind)
        resp = http_get(conn, s3_server, fault_proxy, f"/{bucket}/obj")
        assert resp.status == int(kind)
        assert f"<Code>{code}</Code>".encode() in resp.read()
        fault_proxy.fail_rate = 0.0
        resp = http_get(conn, s3_server, fault_proxy, f"/{bucket}/obj")  # same connection
        assert (resp.status, resp.read()) == (200, b"payload")
    finally:
        conn.close()
    assert (fault_proxy.requests, fault_proxy.faulted) == (2, 1)


def test_truncate_cuts_the_body(s3_server: S3Server, fault_proxy: FaultProxy,
                                bucket: str) -> None:
    data = os.urandom(65536)
    put(s3_server, bucket, "obj", data)
    only_fault(fault_proxy, "truncate")
    conn = http.client.HTTPConnection(HOST, fault_proxy.port, timeout=10)
    try:
        resp = http_get(conn, s3_server, fault_proxy, f"/{bucket}/obj")
        assert resp.status == 200 and resp.getheader("Content-Length") == str(len(data))
        with pytest.raises(http.client.IncompleteRead) as cut:
            resp.read()
        assert cut.value.partial == data[: len(data) // 2]
    finally:
        conn.close()


def test_drop_closes_without_answer(s3_server: S3Server, fault_proxy: FaultProxy,
                                    bucket: str) -> None:
    put(s3_server, bucket, "obj", b"payload")
    only_fault(fault_proxy, "drop")
    assert raw_exchange(s3_server, fault_proxy, f"/{bucket}/obj") == (b"", None)  # FIN


def test_reset_sends_rst(s3_server: S3Server, fault_proxy: FaultProxy, bucket: str) -> None:
    put(s3_server, bucket, "obj", b"payload")
    only_fault(fault_proxy, "reset")
    got, err = raw_exchange(s3_server, fault_proxy, f"/{bucket}/obj")
    assert got == b"" and isinstance(err, ConnectionResetError)


def test_stall_holds_then_closes(s3_server: S3Server, fault_proxy: FaultProxy,
                                 bucket: str) -> None:
    put(s3_server, bucket, "obj", b"payload")
    only_fault(fault_proxy, "stall")
    fault_proxy.stall_seconds = 0.5
    t0 = time.monotonic()
    assert raw_exchange(s3_server, fault_proxy, f"/{bucket}/obj") == (b"", None)
    assert 0.5 <= time.monotonic() - t0 < 5


def test_latency_is_added(s3_server: S3Server, fault_proxy: FaultProxy, bucket: str) -> None:
    put(s3_server, bucket, "obj", b"payload")
    fault_proxy.latency = 0.3
    t0 = time.monotonic()
    got, err = raw_exchange_keepalive(s3_server, fault_proxy, f"/{bucket}/obj")
    assert got == b"payload" and err is None
    assert time.monotonic() - t0 >= 0.3


def test_down_refuses_then_recovers(s3_server: S3Server, fault_proxy: FaultProxy,
                                    bucket: str) -> None:
    put(s3_server, bucket, "obj", b"payload")
    kept = http.client.HTTPConnection(HOST, fault_proxy.port, timeout=10)
    try:
        assert http_get(kept, s3_server, fault_proxy, f"/{bucket}/obj").read() == b"payload"
        fault_proxy.down = True
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((HOST, fault_proxy.port), timeout=5).close()
        with pytest.raises((http.client.HTTPException, OSError)):  # the kept one was cut
            http_get(kept, s3_server, fault_proxy, f"/{bucket}/obj").read()
    finally:
        kept.close()
    fault_proxy.down = False
    assert raw_exchange_keepalive(s3_server, fault_proxy, f"/{bucket}/obj") == (b"payload", None)


def test_seed_repeats_the_faults(s3_server: S3Server, fault_proxy: FaultProxy,
                                 bucket: str) -> None:
    put(s3_server, bucket, "obj", b"payload")
    fault_proxy.faults, fault_proxy.fail_rate = {"500", "503"}, 0.5

    def statuses() -> list[int]:
        conn = http.client.HTTPConnection(HOST, fault_proxy.port, timeout=10)
        try:
            out = []
            for _ in range(20):
                resp = http_get(conn, s3_server, fault_proxy, f"/{bucket}/obj")
                resp.read()
                out.append(resp.status)
            return out
        finally:
            conn.close()

    fault_proxy.seed = 7
    first = statuses()
    fault_proxy.seed = 7
    assert statuses() == first and {200, 500, 503} == set(first)
    assert fault_proxy.requests == 40 and fault_proxy.faulted == 2 * (20 - first.count(200))


def test_obstore_retries_through_faults(s3_server: S3Server, fault_proxy: FaultProxy,
                                        bucket: str) -> None:
    """The proxy is transparent to a retrying client: every read comes out right."""
    data = os.urandom(1 << 20)
    put(s3_server, bucket, "obj", data)
    st = store(s3_server, bucket, fault_proxy.endpoint, QUICK_RETRY)
    fault_proxy.faults = {"drop", "reset", "500", "503", "truncate"}
    fault_proxy.fail_rate = 0.3
    for i in range(60):
        start = (i * 15013) % (len(data) - 8192)
        assert bytes(obstore.get_range(st, "obj", start=start, length=8192)) == \
            data[start:start + 8192]
    assert fault_proxy.faulted > 5


# -- the proxy's HTTP/1.1 framing, against a plain server --------------------------------

class Echo(BaseHTTPRequestHandler):
    """Answers every request with a chunked body: its Host header, then the request body."""

    protocol_version = "HTTP/1.1"

    def do_PUT(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for part in (self.headers["Host"].encode() + b"|", body):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def echo_proxy() -> Iterator[FaultProxy]:
    server = ThreadingHTTPServer((HOST, 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with FaultProxy(f"http://{HOST}:{server.server_address[1]}") as proxy:
            yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_framing_keepalive_chunked_both_ways(echo_proxy: FaultProxy) -> None:
    conn = http.client.HTTPConnection(HOST, echo_proxy.port, timeout=10)
    host = f"{HOST}:{echo_proxy.port}"
    try:
        conn.request("PUT", "/a", body=iter([b"abc", b"", b"defgh"]),
                     encode_chunked=True)  # chunked request
        assert conn.getresponse().read() == f"{host}|abcdefgh".encode()
        conn.request("PUT", "/b", body=b"x" * 100_000)  # Content-Length, same connection
        assert conn.getresponse().read() == f"{host}|".encode() + b"x" * 100_000
        conn.request("PUT", "/c", body=b"", headers={"Expect": "100-continue"})
        assert conn.getresponse().read() == f"{host}|".encode()
    finally:
        conn.close()
    assert echo_proxy.requests == 3


def test_upstream_must_be_loopback() -> None:
    for bad in ("http://10.0.0.1:80", "https://127.0.0.1:443", "http://127.0.0.1"):
        with pytest.raises(ValueError):
            FaultProxy(bad)
    with pytest.raises(ValueError):
        FaultProxy("http://127.0.0.1:1").faults = {"explode"}


# -- (d) tools.s3sync ----------------------------------------------------------------------

def make_tree(root: Path) -> dict[str, bytes]:
    files = {"backups/main/B1/backup.control": b"status = OK\n",
             "backups/main/B1/database/base/1/1259": os.urandom(3 * 8192),
             "backups/main/B1/database/empty": b"",
             "wal/main/000000010000000000000001": os.urandom(6 * 1024 * 1024)}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "backups/main/B2").mkdir(parents=True)  # an empty directory uploads nothing
    return files


def test_s3sync_uploads_the_tree(s3_server: S3Server, bucket: str, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "catalog")
    count, size = sync_dir(tmp_path / "catalog", f"s3://{bucket}/cat/", env=s3_server.env())
    assert (count, size) == (len(files), sum(map(len, files.values())))
    st = store(s3_server, bucket)
    listed = {o["path"]: o["size"] for batch in obstore.list(st) for o in batch}
    assert listed == {f"cat/{rel}": len(data) for rel, data in files.items()}
    for rel, data in files.items():
        assert bytes(obstore.get(st, f"cat/{rel}").bytes()) == data


def run_s3sync(s3: S3Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.s3sync", *args], cwd=REPO,
                          env={**os.environ, **s3.env()}, capture_output=True, text=True,
                          timeout=60, check=False)


def test_s3sync_cli(s3_server: S3Server, bucket: str, tmp_path: Path) -> None:
    make_tree(tmp_path / "catalog")
    done = run_s3sync(s3_server, str(tmp_path / "catalog"), f"s3://{bucket}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("s3sync: 4 files, ")
    os.symlink("backup.control", tmp_path / "catalog/backups/main/B1/link")
    failed = run_s3sync(s3_server, str(tmp_path / "catalog"), f"s3://{bucket}/x")
    assert failed.returncode == 1
    assert "backups/main/B1/link: not a regular file or directory (symlink)" in failed.stderr
    missing = run_s3sync(s3_server, str(tmp_path / "catalog/backups/main/B1/database"),
                         "s3://no-such-bucket-here/x")
    assert missing.returncode == 1 and "NoSuchBucket" in missing.stderr


# -- (e) servers side by side --------------------------------------------------------------

def test_two_servers_side_by_side(s3_server: S3Server, bucket: str, tmp_path: Path) -> None:
    with S3Server.start(tmp_path / "second") as second:
        assert second.endpoint != s3_server.endpoint
        assert not set(second.ports.values()) & set(s3_server.ports.values())
        second.make_bucket("only-here")
        assert b"only-here" in second.request("GET", "/")[1]
        assert b"only-here" not in s3_server.request("GET", "/")[1]
        assert bucket.encode() not in second.request("GET", "/")[1]
        proc = second.proc
        assert proc is not None
    assert proc.poll() is not None  # stopped: no weed left behind
    assert s3_server.request("GET", "/")[0] == 200
