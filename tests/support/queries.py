"""Running a fixture's recorded queries (`expected/<inst>/<id>*.queries.json`) on a server.

The JSON holds the SQL it was made with; running that same SQL through `psql -X -At` gives
a structure directly comparable with the recorded one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tests.support.postgres import PgCluster


def run_queries(pg: PgCluster, sql: dict[str, str], no_generic_md5: list[str],
                rowmd5_tables: Sequence[str] = ()) -> dict[str, Any]:
    """The fixture's own SQL, through psql -X -At, in the structure of queries.json."""
    srv = pg.psql(sql["server"]).split("|")
    out: dict[str, Any] = {
        "server": dict(zip(("pg_is_in_recovery", "server_version", "data_checksums",
                            "wal_segment_size", "block_size"), srv, strict=True)),
        "tablespaces": pg.psql(sql["tablespaces"]).splitlines(),
        "databases": {},
    }
    for db in pg.psql(sql["databases"]).splitlines():
        tables = [line.split("|") for line in pg.psql(sql["user_tables"], db).splitlines()]
        entry: dict[str, Any] = {
            "tables": {n: {"relkind": k, "relpersistence": p} for n, k, p in tables},
            "row_counts": {n: int(pg.psql(sql["row_count"].format(table=n), db))
                           for n, _, _ in tables},
            "md5": {n: pg.psql(sql["table_md5"].format(table=n), db)
                    for n, _, _ in tables if n not in no_generic_md5},
            "sequences": dict(line.split("|") for line in
                              pg.psql(sql["sequences"], db).splitlines()),
        }
        rowmd5 = {n: pg.psql(sql["table_rowmd5_md5"].format(table=n), db)
                  for n, _, _ in tables if n in rowmd5_tables}
        if rowmd5:
            entry["rowmd5_md5"] = rowmd5
        if "public.pgbench_accounts" in entry["tables"]:
            entry["pgbench_accounts_md5"] = pg.psql(sql["pgbench_accounts_md5"], db)
            sums = [int(v) for v in pg.psql(sql["pgbench_sums"], db).split("|")]
            entry["pgbench_sums"] = dict(zip(
                ("sum_abalance", "sum_bbalance", "sum_tbalance", "sum_history_delta",
                 "history_rows"), sums, strict=True))
        out["databases"][db] = entry
    return out
