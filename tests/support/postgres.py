"""A real PostgreSQL 15 cluster for tests, run as the `postgres` OS user.

PostgreSQL refuses to run as root and the tests run as root, so every server
binary is started through `runuser -u postgres`, and every directory the server
touches (data directory, socket directory, tablespaces, restored copies) is
owned by `postgres`. The server listens on a Unix socket only, in a directory
private to the test, so parallel test runs never collide on ports.

Typical use::

    with pg_workdir() as work:
        with PgCluster(work / "data", free_port(), work / "sock") as pg:
            pg.initdb()
            pg.start()
            pg.psql("CREATE TABLE t AS SELECT 1 AS x")

Leaving the `with PgCluster` block always stops the server (fast mode, then
immediate if that fails), so a failing test never leaves one behind.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg

PG_BIN = Path(os.environ.get("PBKFS_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"
# Tests must never hang: every server command gets a bound.
COMMAND_TIMEOUT = 300


def postgres_available() -> bool:
    """True when the PostgreSQL 15 binaries and the `postgres` OS user exist."""
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        return False
    return (PG_BIN / "postgres").exists() and (PG_BIN / "initdb").exists()


def require_postgres() -> None:
    """Skip locally, fail in CI, when PostgreSQL 15 is missing."""
    from tests.support.env import require

    require(postgres_available(), f"PostgreSQL 15 binaries in {PG_BIN} and OS user {PG_USER}")


def free_port() -> int:
    """A TCP port nobody listens on now (the socket file name uses it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_ids() -> tuple[int, int]:
    """(uid, gid) of the `postgres` OS user."""
    entry = pwd.getpwnam(PG_USER)
    return entry.pw_uid, entry.pw_gid


def chown_postgres(path: Path, recursive: bool = False) -> None:
    """Give `path` (and with `recursive` everything below it) to `postgres`."""
    uid, gid = postgres_ids()
    os.chown(path, uid, gid, follow_symlinks=False)
    if recursive and path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def make_owned_dir(path: Path, mode: int = 0o700) -> Path:
    """Create `path` (parents too) owned by `postgres` with `mode`."""
    path.mkdir(parents=True, exist_ok=True)
    chown_postgres(path)
    path.chmod(mode)
    return path


def prepare_datadir(path: Path) -> None:
    """Make a copied/exported data directory startable: owned by postgres, mode 0700."""
    chown_postgres(path, recursive=True)
    path.chmod(0o700)


@contextlib.contextmanager
def pg_workdir(prefix: str = "pbkfs-pg-") -> Iterator[Path]:
    """A fresh directory under /tmp that `postgres` can enter (pytest's tmp_path is root-only).

    Removed on exit, whatever happened.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _as_postgres(cmd: Sequence[str | os.PathLike[str]]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *(os.fspath(c) for c in cmd)]


def _options(options: Mapping[str, object] | Iterable[str] | None) -> list[str]:
    """Server settings as `-c name=value` arguments (a mapping, or ready-made strings)."""
    if options is None:
        return []
    if isinstance(options, Mapping):
        out: list[str] = []
        for name, value in options.items():
            out += ["-c", f"{name}={value}"]
        return out
    return list(options)


class PgCluster:
    """One PostgreSQL 15 data directory and the server running on it."""

    def __init__(self, datadir: Path, port: int, sockdir: Path) -> None:
        self.datadir = Path(datadir)
        self.port = port
        self.sockdir = Path(sockdir)
        self.logfile = self.sockdir / f"postgres-{port}.log"

    # -- plumbing -------------------------------------------------------------

    def run(
        self,
        cmd: Sequence[str | os.PathLike[str]],
        input: str | None = None,
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command as `postgres` from a directory it can read."""
        proc = subprocess.run(
            _as_postgres(cmd),
            input=input,
            capture_output=True,
            text=True,
            cwd="/tmp",
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{shlex.join(_as_postgres(cmd))} exited {proc.returncode}\n"
                f"stdout: {proc.stdout[-4000:]}\nstderr: {proc.stderr[-4000:]}"
            )
        return proc

    def _ensure_sockdir(self) -> None:
        make_owned_dir(self.sockdir, 0o700)

    def conninfo(self, dbname: str = "postgres") -> dict[str, Any]:
        """Keyword arguments for psycopg.connect / the tools' -h/-p/-U/-d."""
        return {"host": str(self.sockdir), "port": self.port, "user": PG_USER, "dbname": dbname}

    # -- life cycle -----------------------------------------------------------

    def initdb(self, checksums: bool = True, extra_args: Sequence[str] = ()) -> None:
        """initdb with the fixture's settings: trust auth, C locale, UTF8."""
        self._ensure_sockdir()
        if not self.datadir.parent.exists():
            make_owned_dir(self.datadir.parent, 0o755)
        make_owned_dir(self.datadir, 0o700)
        cmd: list[str | os.PathLike[str]] = [
            PG_BIN / "initdb", "-D", self.datadir, "-U", PG_USER, "-A", "trust",
            "--locale=C", "--encoding=UTF8", "--no-sync",
        ]
        if checksums:
            cmd.append("-k")
        self.run([*cmd, *extra_args])

    def start(self, options: Mapping[str, object] | Iterable[str] | None = None) -> None:
        """Start on the private socket only; waits until connections are accepted."""
        self._ensure_sockdir()
        args = [
            "-p", str(self.port), "-k", str(self.sockdir), "-c", "listen_addresses=",
            *_options(options),
        ]
        proc = self.run(
            [
                PG_BIN / "pg_ctl", "-D", self.datadir, "-l", self.logfile, "-w", "-t", "120",
                "-o", shlex.join(args), "start",
            ],
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"PostgreSQL did not start on {self.datadir} (pg_ctl exited {proc.returncode});"
                f" server log:\n{self.log_tail()}"
            )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server if it runs (no error otherwise)."""
        if not self.is_running:
            return
        self.run([PG_BIN / "pg_ctl", "-D", self.datadir, "-m", mode, "-w", "-t", "120", "stop"])

    @property
    def is_running(self) -> bool:
        if not (self.datadir / "postmaster.pid").exists():
            return False
        proc = self.run([PG_BIN / "pg_ctl", "-D", self.datadir, "status"], check=False)
        return proc.returncode == 0

    def log_tail(self, chars: int = 4000) -> str:
        """End of the server log, for assertion messages."""
        try:
            return self.logfile.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()

    def teardown(self) -> None:
        """Stop the server whatever state it is in."""
        try:
            self.stop("fast")
        except Exception:
            with contextlib.suppress(Exception):
                self.stop("immediate")

    # -- clients --------------------------------------------------------------

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL through `psql -X -At` (statements one by one); stdout without final newline."""
        proc = self.run(
            [
                PG_BIN / "psql", "-X", "-At", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.sockdir,
                "-p", str(self.port), "-U", PG_USER, "-d", dbname, "-f", "-",
            ],
            input=sql,
        )
        return proc.stdout.rstrip("\n")

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        """An autocommit psycopg connection over the socket."""
        return psycopg.connect(**self.conninfo(dbname), autocommit=True)

    def pgbench(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Run pgbench against this server (raises on failure)."""
        return self.run(
            [
                PG_BIN / "pgbench", "-h", self.sockdir, "-p", str(self.port), "-U", PG_USER,
                *args,
            ]
        )

    def databases(self) -> list[str]:
        """Databases a client can connect to (not templates)."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate"
                " ORDER BY datname"
            ).fetchall()
        return [r[0] for r in rows]


@contextlib.contextmanager
def running_cluster(
    workdir: Path,
    name: str = "src",
    checksums: bool = True,
    initdb_args: Sequence[str] = (),
    options: Mapping[str, object] | Iterable[str] | None = None,
) -> Iterator[PgCluster]:
    """initdb + start a cluster under `workdir/<name>`; always stopped on exit."""
    cluster = PgCluster(workdir / name / "data", free_port(), workdir / name / "sock")
    make_owned_dir(workdir / name, 0o755)
    try:
        cluster.initdb(checksums=checksums, extra_args=initdb_args)
        cluster.start(options)
        yield cluster
    finally:
        cluster.teardown()


FINGERPRINT_TABLES = """
SELECT format('%I.%I', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm', 'p') AND c.relpersistence = 'p'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
ORDER BY 1
"""


def table_fingerprint(
    cluster: PgCluster, dbname: str | None = None
) -> dict[str, tuple[int, str | None]]:
    """{"<db>/<schema>.<table>": (row count, md5 of the rows in C order)}.

    Covers every permanent user table, partitioned table and materialized view
    of `dbname`, or of every connectable database when `dbname` is None — the
    same md5 as the fixture's queries.json (`md5(string_agg(t::text, ',' ORDER
    BY t::text COLLATE "C"))`; None for an empty table). Unlogged tables are
    left out: recovery empties them by design.
    """
    out: dict[str, tuple[int, str | None]] = {}
    for db in [dbname] if dbname else cluster.databases():
        with cluster.connect(db) as conn:
            tables = [r[0] for r in conn.execute(FINGERPRINT_TABLES).fetchall()]
            for table in tables:
                row = conn.execute(
                    f"SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t::text"
                    f' COLLATE "C")) FROM {table} t'
                ).fetchone()
                assert row is not None
                out[f"{db}/{table}"] = (int(row[0]), row[1])
    return out
