"""Branches with PostgreSQL: a database in a useful state branched twice, branches of a
branch, each a running server that sees its parent's data and none of its siblings'."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mounting import mounted, pbkfs
from tests.support.postgres import PG_BIN, PgCluster, free_port, make_owned_dir

pytestmark = pytest.mark.mount
CATALOG = ("pg15", "main", "TP2KC3")


@contextlib.contextmanager
def running(work: Path, name: str, diff: Path, **how: object) -> Iterator[PgCluster]:
    """A mount of `diff` with PostgreSQL started on it; stopped and unmounted after."""
    mnt = make_owned_dir(work / f"mnt-{name}", 0o700)
    with mounted(mnt, diff, **how), \
            PgCluster(mnt, free_port(), make_owned_dir(work / f"sock-{name}", 0o755)) as pg:
        pg.start({"shared_buffers": "16MB", "max_connections": "10"})
        yield pg
        pg.stop()


def tables(pg: PgCluster) -> str:
    return pg.psql("SELECT coalesce(string_agg(relname, ',' ORDER BY relname), '') "
                   "FROM pg_class WHERE relname LIKE 'branch_%' AND relkind = 'r'")


@pytest.mark.parametrize("layout", ["--local-wal", "--wal-through-mount"])
def test_branches_of_a_running_database(fixtures_dir: Path, work: Path, layout: str) -> None:
    """pg_wal in the diff (each branch gets its own copy) or through the mount (it is
    layered like every other file)."""
    catalog = fixtures_dir / CATALOG[0] / "catalog"
    root, a, aa, b = work / "root", work / "a", work / "aa", work / "b"
    with running(work, "root", root, store=catalog, instance=CATALOG[1],
                 backup_id=CATALOG[2], extra=[layout]) as pg:
        pg.psql("CREATE TABLE branch_root AS SELECT g, md5(g::text) AS h "
                "FROM generate_series(1, 50000) g; CHECKPOINT")
        pg.psql("UPDATE branch_root SET h = 'root' WHERE g <= 10")
    with running(work, "a", a, extra=["--from", str(root)]) as pg:
        assert tables(pg) == "branch_root"
        assert pg.psql("SELECT count(*) FROM branch_root WHERE h = 'root'") == "10"
        pg.psql("CREATE TABLE branch_a AS SELECT g FROM generate_series(1, 1000) g; "
                "UPDATE branch_root SET h = 'a' WHERE g <= 5; DELETE FROM branch_root "
                "WHERE g > 40000; VACUUM branch_root")
    with running(work, "aa", aa, extra=["--from", str(a)]) as pg:  # a branch of a branch
        assert tables(pg) == "branch_a,branch_root"
        assert pg.psql("SELECT count(*), sum(g) FROM branch_root") == "40000|800020000"
        assert pg.psql("SELECT count(*) FROM branch_root WHERE h = 'a'") == "5"
        pg.psql("INSERT INTO branch_root SELECT g, 'aa' FROM generate_series(40001, 45000) g")
        assert pg.psql("SELECT count(*) FROM branch_root") == "45000"
        amcheck = pg.run([PG_BIN / "pg_amcheck", "-h", pg.sockdir, "-p", str(pg.port),
                          "-U", "postgres", "--all", "--heapallindexed", "--install-missing"],
                         check=False, timeout=240)
        assert amcheck.returncode == 0, amcheck.stdout + amcheck.stderr
    with running(work, "b", b, extra=["--from", str(root)]) as pg:  # a's sibling
        assert tables(pg) == "branch_root"
        assert pg.psql("SELECT count(*), count(*) FILTER (WHERE h = 'root') "
                       "FROM branch_root") == "50000|10"
        pg.psql("CREATE TABLE branch_b (x int)")
    # each branch kept its own state over a remount (no --from: the binding names its layers)
    with running(work, "aa2", aa) as pg:
        assert tables(pg) == "branch_a,branch_root"
        assert pg.psql("SELECT count(*), count(*) FILTER (WHERE h = 'aa') "
                       "FROM branch_root") == "45000|5000"
    listed = {d["diff"]: d for d in json.loads(
        pbkfs("list", "--diffs", str(work), "--format", "json").stdout)}
    assert listed[str(root)]["children"] == sorted([str(a), str(b)])
    assert listed[str(a)]["children"] == [str(aa)] and listed[str(aa)]["parent"] == str(a)
    if layout == "--local-wal":  # each its own pg_wal: the root's is as the root left it
        assert (aa / "wal").is_dir() and (b / "wal").is_dir()
        assert not (aa / "wal").samefile(a / "wal")
