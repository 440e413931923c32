"""Point-in-time recovery scenario, shared by every way of producing a data directory.

`build_source()` makes a real PostgreSQL 15 cluster (1 MB WAL segments) whose
archive_command is `mkbackup archive-push` into a fresh catalog, takes an
ARCHIVE-mode FULL, commits steps 1-2, takes an ARCHIVE-mode DELTA, commits
steps 3-4, and records after each step: the exact commit time
(pg_xact_commit_timestamp), a time after the commit (clock_timestamp), the
xid, the LSN where its commit record starts (pg_walinspect), the LSN after it,
a restore point, and the data the cluster then held. The source cluster is
stopped once every segment is archived; only the catalog is used afterwards.

`run_case()` recovers one target: it plans the recovery (pbkfs.recovery),
asks a `DatadirFactory` for a data directory of the chosen backup with the
recovery files in it (an exported tree, or later a mount), starts PostgreSQL
with `pbkfs archive-get` as restore_command, waits until it paused or promoted
at the target, and checks the data is exactly what was committed up to it and
that the catalog was not written.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pbkfs.catalog.store import Store
from pbkfs.recovery import (
    RecoveryFiles,
    RecoveryPlan,
    RecoveryStatus,
    inspect_recovery_dir,
    parse_target,
    plan_recovery,
    recovery_files,
)
from pbkfs.view import open_view
from pbkfs.view.export import export_tree
from tests.support.postgres import (
    PG_BIN,
    PG_USER,
    PgCluster,
    chown_postgres,
    free_port,
    pg_workdir,
    prepare_datadir,
    running_cluster,
    table_fingerprint,
)
from tests.support.trees import tree_state
from tools.mkbackup.backup import BackupOptions, run_backup
from tools.mkbackup.instance import add_instance, init_catalog

INSTANCE = "pitr"
WAIT_STEPS = 1200  # x 0.25 s: a bound against hanging, not a timing assertion
SECOND_APART = 1.1  # keeps backups' recovery-time seconds apart from the steps' commits

State = dict[str, tuple[int, str | None]]

SETUP_SQL = """
CREATE EXTENSION pg_walinspect;
CREATE TABLE pitr_rows (step int, n int, payload text, PRIMARY KEY (step, n));
CREATE TABLE pitr_kv (k int PRIMARY KEY, v bigint, last_step int);
INSERT INTO pitr_kv SELECT g, g * 10, 0 FROM generate_series(1, 50) g;
INSERT INTO pitr_rows SELECT 0, g, md5(g::text) FROM generate_series(1, 200) g;
CHECKPOINT;
"""

STEP_SQL = (
    "INSERT INTO pitr_rows SELECT %(step)s, g, md5((%(step)s * 1000 + g)::text)"
    " FROM generate_series(1, 30) g",
    "UPDATE pitr_kv SET v = v + %(step)s * k, last_step = %(step)s WHERE k %% 4 = %(step)s %% 4",
    "DELETE FROM pitr_rows WHERE step = %(step)s - 1 AND n %% 7 = 0",
)


# -- server-side helpers (also used by tests/postgres/test_recovery_e2e.py) ----------------

def _psql_value(pg: PgCluster, sql: str) -> tuple[int, str]:
    proc = pg.run([PG_BIN / "psql", "-X", "-At", "-h", pg.sockdir, "-p", str(pg.port),
                   "-U", PG_USER, "-d", "postgres", "-c", sql], check=False, timeout=60)
    return proc.returncode, proc.stdout.strip()


def wait_until_promoted(pg: PgCluster) -> None:
    """Until the server accepts queries and is out of recovery (fails if it stops)."""
    for _ in range(WAIT_STEPS):
        if not pg.is_running:
            raise AssertionError(f"server stopped during recovery:\n{pg.log_tail()}")
        rc, out = _psql_value(pg, "SELECT pg_is_in_recovery()")
        if rc == 0 and out == "f":
            return
        time.sleep(0.25)
    raise AssertionError(f"server did not finish recovery:\n{pg.log_tail()}")


def wait_until_paused(pg: PgCluster) -> None:
    """Until recovery is paused at its target (fails if the server stops)."""
    for _ in range(WAIT_STEPS):
        if not pg.is_running:
            raise AssertionError(f"server stopped during recovery:\n{pg.log_tail()}")
        rc, out = _psql_value(pg, "SELECT pg_is_in_recovery(), pg_get_wal_replay_pause_state()")
        if rc == 0 and out == "t|paused":
            return
        time.sleep(0.25)
    raise AssertionError(f"recovery did not pause at its target:\n{pg.log_tail()}")


# -- the source --------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """What was recorded right after step `n` committed."""

    n: int
    xid: int
    commit_time: datetime  # the commit record's own timestamp
    after_time: datetime  # clock_timestamp() once the commit returned
    commit_lsn: str  # where the commit record starts
    lsn_after: str  # pg_current_wal_lsn() once the commit returned
    restore_point: str  # created after the commit
    state: State  # the data after the commit


@dataclass
class PitrSource:
    catalog: Path
    instance: str
    full_id: str
    delta_id: str
    initial: State  # the data when FULL was taken
    steps: dict[int, Step] = field(default_factory=dict)
    last_segment: str = ""  # the last archived segment

    def state(self, n: int) -> State:
        """The data after step n (0: before any step)."""
        return self.initial if n == 0 else self.steps[n].state

    def backup_id(self, which: str | None) -> str | None:
        return {"FULL": self.full_id, "DELTA": self.delta_id, None: None}[which]


def archive_command(program: Path, catalog: Path) -> str:
    return (f"{program} archive-push -B {catalog} --instance {INSTANCE} "
            "--wal-file-path=%p --wal-file-name=%f --compress-algorithm=zlib")


def wait_archived(pg: PgCluster, segment: str) -> None:
    """Until pg_stat_archiver reports `segment` archived; fails fast on archiving failures."""
    sql = "SELECT coalesce(last_archived_wal, ''), failed_count, last_failed_wal " \
          "FROM pg_stat_archiver"
    for _ in range(WAIT_STEPS):
        with pg.connect() as conn:
            row = conn.execute(sql).fetchone()
        assert row is not None
        if row[0] >= segment:
            return
        if row[1]:
            raise AssertionError(f"archive_command failed for {row[2]}:\n{pg.log_tail()}")
        time.sleep(0.25)
    raise AssertionError(f"{segment} was not archived:\n{pg.log_tail()}")


def _commit_step(pg: PgCluster, n: int) -> Step:
    with pg.connect() as conn:
        start = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        with conn.transaction():
            for sql in STEP_SQL:
                conn.execute(sql, {"step": n})
            xid_row = conn.execute("SELECT txid_current()").fetchone()
        assert start is not None and xid_row is not None
        xid = int(xid_row[0])
        row = conn.execute("SELECT clock_timestamp(), pg_current_wal_lsn()::text,"
                           " pg_xact_commit_timestamp((%s::bigint %% 4294967296)::text::xid),"
                           " pg_current_wal_flush_lsn()::text",
                           (xid,)).fetchone()
        assert row is not None
        after_time, lsn_after, commit_time, flushed = row
        commit = conn.execute(
            "SELECT start_lsn::text FROM pg_get_wal_records_info(%s::pg_lsn, %s::pg_lsn)"
            " WHERE resource_manager = 'Transaction' AND record_type LIKE 'COMMIT%%'"
            " AND xid = (%s::bigint %% 4294967296)::text::xid",
            (start[0], flushed, xid)).fetchall()
        assert len(commit) == 1, commit
        name = f"pitr_step_{n}"
        conn.execute("SELECT pg_create_restore_point(%s)", (name,))
    return Step(n, xid, commit_time, after_time, str(commit[0][0]), str(lsn_after), name,
                table_fingerprint(pg, "postgres"))


def _backup(catalog: Path, pg: PgCluster, mode: str) -> str:
    conn = pg.conninfo()
    opts = BackupOptions(mode=mode, stream=False, host=conn["host"], port=conn["port"],
                         user=conn["user"], dbname=conn["dbname"], archive_timeout=120)
    return run_backup(catalog, INSTANCE, opts).backup_id


@contextlib.contextmanager
def build_source(archive_push_program: Path) -> Iterator[PitrSource]:
    """The catalog of the scenario (in a temporary directory removed on exit)."""
    with pg_workdir("pbkfs-pitr-") as work:
        catalog = work / "catalog"
        options = {"archive_mode": "on", "track_commit_timestamp": "on", "autovacuum": "off",
                   "archive_command": archive_command(archive_push_program, catalog)}
        with running_cluster(work, "src", initdb_args=["--wal-segsize=1"],
                             options=options) as pg:
            init_catalog(catalog)
            add_instance(catalog, INSTANCE, pg.datadir)
            chown_postgres(catalog, recursive=True)  # archive_command runs as postgres
            pg.psql(SETUP_SQL)
            initial = table_fingerprint(pg, "postgres")
            full_id = _backup(catalog, pg, "FULL")
            source = PitrSource(catalog, INSTANCE, full_id, "", initial)
            for n in (1, 2):
                time.sleep(SECOND_APART)
                source.steps[n] = _commit_step(pg, n)
            time.sleep(SECOND_APART)
            source.delta_id = _backup(catalog, pg, "DELTA")
            for n in (3, 4):
                time.sleep(SECOND_APART)
                source.steps[n] = _commit_step(pg, n)
            segment = pg.psql("SELECT pg_walfile_name(pg_switch_wal())")
            wait_archived(pg, segment)
            source.last_segment = segment
            pg.stop()
        chown_postgres(catalog, recursive=True)  # the backups are read by archive-get
        yield source


# -- recovering a target -----------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One recovery: target options (parse_target's keywords), the backup asked for (None:
    `--instance` alone), and what must come out."""

    id: str
    options: dict[str, str]
    backup: str | None  # "FULL", "DELTA" or None
    chosen: str  # "FULL" or "DELTA": the backup the plan must use
    step: int  # the data must be exactly the state after this step
    promoted: bool


def target_options(source: PitrSource, kind: str, n: int, **extra: str) -> dict[str, str]:
    """parse_target keywords for a target of `kind` at step n."""
    s = source.steps[n]
    value = {
        "time": s.commit_time.isoformat(sep=" "),
        "time_after": s.after_time.isoformat(sep=" "),
        "xid": str(s.xid),
        "lsn": s.commit_lsn,
        "name": s.restore_point,
    }[kind]
    return {("time" if kind == "time_after" else kind): value, **extra}


DatadirFactory = Callable[[RecoveryPlan, RecoveryFiles], AbstractContextManager[Path]]


@contextlib.contextmanager
def exported_datadir(source: PitrSource, plan: RecoveryPlan,
                     files: RecoveryFiles) -> Iterator[Path]:
    """The chosen backup written out as restore would, plus the recovery files."""
    with pg_workdir("pbkfs-pitr-data-") as work:
        data = work / "data"
        export_tree(open_view(Store(source.catalog), source.instance, plan.backup.id), data)
        files.apply_to(data)
        prepare_datadir(data)
        yield data


@dataclass
class Outcome:
    plan: RecoveryPlan
    state: State
    in_recovery: bool
    log: str
    status: RecoveryStatus


def recover(source: PitrSource, options: dict[str, str], backup: str | None,
            program: Path, datadir: DatadirFactory) -> Outcome:
    """Plan, get a data directory, start PostgreSQL, wait for the target, read the data."""
    store = Store(source.catalog)
    requested = parse_target(**options)
    plan = plan_recovery(store.instance(source.instance), requested, source.backup_id(backup))
    assert plan.recovery and not plan.missing, plan.describe()
    files = recovery_files(plan, source.catalog, program=str(program))
    before = tree_state(source.catalog)
    with datadir(plan, files) as data, pg_workdir("pbkfs-pitr-sock-") as work, \
            PgCluster(data, free_port(), work / "sock") as pg:
        pg.start({"archive_mode": "off"})
        if plan.target.action == "promote" or plan.target.stop == "latest":
            wait_until_promoted(pg)
        else:
            wait_until_paused(pg)
        state = table_fingerprint(pg, "postgres")
        _rc, in_recovery = _psql_value(pg, "SELECT pg_is_in_recovery()")
        pg.stop()
        log = pg.log_tail(200_000)
        status = inspect_recovery_dir(data)
    assert tree_state(source.catalog) == before, "the catalog was written to"
    return Outcome(plan, state, in_recovery == "t", log, status)


def run_case(source: PitrSource, case: Case, program: Path,
             datadir: DatadirFactory) -> Outcome:
    """Recover `case` and check it landed exactly on its target."""
    out = recover(source, case.options, case.backup, program, datadir)
    want_backup = source.backup_id(case.chosen)
    assert out.plan.backup.id == want_backup, (out.plan.describe(), want_backup)
    expected = source.state(case.step)
    if out.state != expected:
        near = [n for n in range(0, len(source.steps) + 1) if source.state(n) == out.state]
        raise AssertionError(f"{case.id}: recovered data is the state after step(s) {near}, "
                             f"expected step {case.step}\n{out.log[-3000:]}")
    assert out.in_recovery == (not case.promoted)
    if out.plan.target.kind not in ("immediate", "latest"):
        assert "recovery stopping" in out.log, out.log[-3000:]
    if case.promoted:
        assert out.status.finished and out.status.timeline == 2, out.status.describe()
    else:
        assert out.status.recovery_signal and not out.status.finished, out.status.describe()
    return out
