"""The one psycopg connection a backup uses, and every SQL it runs.

A non-exclusive backup belongs to the session that started it, so start, the
WAL-retaining temporary slot and stop all happen on this single connection;
if the process dies the server ends the backup and drops the slot itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from pbkfs.catalog.lsn import parse_lsn
from tools.mkbackup.errors import ServerError

_SAFE_CONNVAL = re.compile(r"^[A-Za-z0-9_./-]+$")
# Not copied into primary_conninfo: never useful to a replica (dbname, password, ...), local
# to this host (passfile), set by us (connect_timeout), or keywords libpq 15 does not have
# (the bundled libpq may be newer than the server).
_CONNINFO_SKIP = frozenset(
    {
        "replication", "dbname", "fallback_application_name", "password", "passfile",
        "connect_timeout", "sslnegotiation", "sslcertmode", "gssdelegation",
        "load_balance_hosts", "require_auth", "sslkeylogfile", "scram_client_key",
        "scram_server_key", "min_protocol_version", "max_protocol_version",
        "oauth_issuer", "oauth_client_id", "oauth_client_secret", "oauth_scope",
    }
)


@dataclass(frozen=True)
class ServerInfo:
    version_num: int
    system_identifier: int
    data_directory: str
    user: str
    is_superuser: bool
    in_recovery: bool
    wal_level: str
    block_size: int
    wal_block_size: int
    wal_segment_size: int


@dataclass(frozen=True)
class StopResult:
    stop_lsn: int
    labelfile: str
    spcmapfile: str
    recovery_xid: int
    recovery_time: datetime


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class PgConnection:
    """psycopg connection (autocommit) with the backup API around it."""

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        user: str | None = None,
        dbname: str | None = None,
    ) -> None:
        params: dict[str, Any] = {}
        if host:
            params["host"] = host
        if port:
            params["port"] = port
        if user:
            params["user"] = user
        if dbname:
            params["dbname"] = dbname
        where = ", ".join(f"{k}={v}" for k, v in params.items()) or "libpq defaults"
        self.where = where
        try:
            self.conn = psycopg.connect(
                **params, autocommit=True, connect_timeout=10,
                fallback_application_name="mkbackup",
            )
        except psycopg.Error as exc:
            raise ServerError(
                f"cannot connect to the PostgreSQL server ({where}): {_first_line(exc)}"
            ) from None
        self.slot_name: str | None = None

    def close(self) -> None:
        self.conn.close()

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        """First row of `sql`; ServerError naming the server function that failed."""
        try:
            row = self.conn.execute(sql, params).fetchone()
        except psycopg.Error as exc:
            m = re.search(r"pg_catalog\.(\w+)\(", sql)
            what = m.group(1) + "()" if m else "query"
            raise ServerError(f"{what} failed on the server: {_first_line(exc)}") from None
        if row is None:
            raise ServerError(f"no result from: {sql}")
        return tuple(row)

    def server_info(self) -> ServerInfo:
        """Facts about the server; the superuser-only ones are left empty for other roles
        (check_can_backup then says what is wrong instead of a permission error)."""
        version, user, superuser, recovery = self._one(
            "SELECT current_setting('server_version_num')::int, current_user,"
            " (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user),"
            " pg_catalog.pg_is_in_recovery()"
        )
        row: tuple[Any, ...] = (0, "", "", 0, 0, 0)
        if superuser:
            row = self._one(
                "SELECT (SELECT system_identifier FROM pg_catalog.pg_control_system()),"
                " current_setting('data_directory'), current_setting('wal_level'),"
                " current_setting('block_size')::int, current_setting('wal_block_size')::int,"
                " pg_catalog.pg_size_bytes(current_setting('wal_segment_size'))"
            )
        return ServerInfo(
            version_num=int(version),
            system_identifier=int(row[0]),
            data_directory=str(row[1]),
            user=str(user),
            is_superuser=bool(superuser),
            in_recovery=bool(recovery),
            wal_level=str(row[2]),
            block_size=int(row[3]),
            wal_block_size=int(row[4]),
            wal_segment_size=int(row[5]),
        )

    def check_can_backup(self, info: ServerInfo) -> None:
        """Refuse servers this writer cannot back up, saying why."""
        if not 150000 <= info.version_num < 160000:
            raise ServerError(
                f"server version {info.version_num} is not supported: mkbackup writes"
                " backups of PostgreSQL 15 only"
            )
        if not info.is_superuser:
            raise ServerError(
                f"role {info.user!r} is not a superuser; connect as a superuser"
                " (e.g. -U postgres) to take a backup"
            )
        if info.in_recovery:
            raise ServerError("the server is a standby; backups from a replica are not supported")
        if info.wal_level == "minimal":
            raise ServerError("wal_level is 'minimal'; online backups need wal_level=replica")

    def start_backup(self, label: str, slot_name: str) -> tuple[int, int]:
        """Reserve WAL with a temporary slot, then pg_backup_start(fast); (start LSN, timeline)."""
        self._one(
            "SELECT pg_catalog.pg_create_physical_replication_slot(%s, true, true)", (slot_name,)
        )
        self.slot_name = slot_name
        (lsn,) = self._one("SELECT pg_catalog.pg_backup_start(%s, true)::text", (label,))
        (tli,) = self._one("SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()")
        return parse_lsn(lsn), int(tli)

    def current_timeline(self) -> int:
        (tli,) = self._one("SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()")
        return int(tli)

    def stop_backup(self) -> StopResult:
        """pg_backup_stop(false): the stream backup does not wait for archiving."""
        row = self._one(
            "SELECT pg_catalog.txid_snapshot_xmax(pg_catalog.txid_current_snapshot()),"
            " current_timestamp(0)::timestamptz, lsn::text, labelfile, spcmapfile"
            " FROM pg_catalog.pg_backup_stop(false)"
        )
        return StopResult(
            stop_lsn=parse_lsn(row[2]),
            labelfile=str(row[3]),
            spcmapfile=str(row[4] or ""),
            recovery_xid=int(row[0]),
            recovery_time=row[1],
        )

    def switch_wal_past(self, lsn: int, segment_size: int) -> None:
        """Make sure the segment holding `lsn` is finished (pg_switch_wal when it is not)."""
        (insert,) = self._one("SELECT pg_catalog.pg_current_wal_insert_lsn()::text")
        if parse_lsn(insert) // segment_size == lsn // segment_size:
            self._one("SELECT pg_catalog.pg_switch_wal()::text")

    def database_map(self) -> list[tuple[int, str]]:
        """(oid, name) of every database but the templates, as in database_map."""
        try:
            rows = self.conn.execute(
                "SELECT oid, datname FROM pg_catalog.pg_database"
                " WHERE datname NOT IN ('template1'::name, 'template0'::name) ORDER BY oid"
            ).fetchall()
        except psycopg.Error as exc:
            raise ServerError(f"cannot list databases: {_first_line(exc)}") from None
        return [(int(r[0]), str(r[1])) for r in rows]

    def conninfo_string(self) -> str:
        """primary_conninfo: the connection's settings minus password/dbname, like pg_probackup."""
        parts = []
        for opt in self.conn.pgconn.info:
            key = opt.keyword.decode()
            if key in _CONNINFO_SKIP:
                continue
            if opt.val is None or opt.val == b"":
                continue
            val = opt.val.decode(errors="replace")
            if not _SAFE_CONNVAL.match(val):
                val = "'" + val.replace("\\", "\\\\").replace("'", "\\'") + "'"
            parts.append(f"{key}={val}")
        return " ".join(parts)
