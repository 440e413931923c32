"""The strict Prometheus reader the `pbkfs stat` tests rely on (tests/mount/test_stat_cli.py)."""

from __future__ import annotations

import pytest

from tests.support.prometheus import parse_prometheus


def test_parser_is_strict() -> None:
    ok = "# HELP pbkfs_x_total X.\n# TYPE pbkfs_x_total counter\npbkfs_x_total{a=\"b\"} 1\n"
    assert parse_prometheus(ok)[1] == {("pbkfs_x_total", (("a", "b"),)): 1.0}
    for bad in ["pbkfs_x_total 1\n", ok + "pbkfs_y 2\n", ok.replace('"b"', "b"),
                ok.replace(" 1\n", " one\n")]:
        with pytest.raises(AssertionError):
            parse_prometheus(bad)
