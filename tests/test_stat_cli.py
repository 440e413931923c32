"""`pbkfs stat`: live figures move as a mount is used; Prometheus output parses; --reset."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounting import mounted, pbkfs, require_fuse
from tests.support.postgres import pg_workdir

pytestmark = pytest.mark.mount

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')
_KINDS = {"counter", "gauge", "summary", "histogram", "untyped"}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_prometheus(text: str) -> tuple[dict[str, str], Samples]:
    """A strict reader of the text exposition format: every sample belongs to a family declared
    by one TYPE line just before it, names and labels are well formed, values are floats."""
    types: dict[str, str] = {}
    samples: Samples = {}
    current = ""
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(_NAME, name), line
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in _KINDS and name not in types, line
            types[name] = kind
            current = name
            continue
        assert line and not line.startswith("#"), f"stray line {line!r}"
        m = _SAMPLE.match(line)
        assert m, f"bad sample {line!r}"
        name, _, body, value = m.groups()
        family = name
        if types.get(current) in ("summary", "histogram"):
            family = re.sub(r"_(sum|count|bucket)$", "", name)
        assert family == current, f"{name} outside its family {current}"
        labels: list[tuple[str, str]] = []
        if body:
            pos = 0
            while pos < len(body):
                lm = _LABEL.match(body, pos)
                assert lm, f"bad labels in {line!r}"
                labels.append((lm.group(1), lm.group(2)))
                pos = lm.end()
        key = (name, tuple(sorted(labels)))
        assert key not in samples, f"duplicate sample {line!r}"
        assert re.fullmatch(r"[-+]?(\d+(\.\d*)?([eE][-+]?\d+)?|Inf|NaN)", value), line
        samples[key] = float(value)
    return types, samples


@pytest.fixture
def work() -> Iterator[Path]:
    require_fuse()
    with pg_workdir("pbkfs-stat-") as w:
        yield w


def stat_json(mnt: Path, *extra: str) -> dict:  # type: ignore[type-arg]
    return json.loads(pbkfs("stat", "-D", str(mnt), "--format", "json", *extra).stdout)


def test_stat_moves_parses_and_resets(work: Path) -> None:
    base = work / "base"
    base.mkdir()
    (base / "file").write_bytes(os.urandom(200_000))
    mnt, diff = work / "mnt", work / "diff"
    with mounted(mnt, diff, plain=base):
        before = stat_json(mnt)
        data = (mnt / "file").read_bytes()
        with open(mnt / "copy", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        after = stat_json(mnt)
        assert after["reads"]["bytes"] >= before["reads"]["bytes"] + 200_000
        assert after["writes"]["bytes"] >= before["writes"]["bytes"] + 200_000
        assert after["fsyncs"] > before["fsyncs"]
        assert after["diff_bytes"] >= 200_000

        text = pbkfs("stat", "-D", str(mnt)).stdout
        assert "operation" in text and "read" in text and "worker" in text

        prom = pbkfs("stat", "-D", str(mnt), "--format", "prometheus").stdout
        types, samples = parse_prometheus(prom)
        assert all(name.startswith("pbkfs_") for name in types)
        assert types["pbkfs_operation_latency_microseconds"] == "summary"
        assert all(t != "counter" or n.endswith("_total") for n, t in types.items())
        assert samples[("pbkfs_write_bytes_total", ())] >= 200_000
        p50 = samples[("pbkfs_operation_latency_microseconds",
                       (("op", "read"), ("quantile", "0.5")))]
        p99 = samples[("pbkfs_operation_latency_microseconds",
                       (("op", "read"), ("quantile", "0.99")))]
        assert 0 < p50 <= p99
        assert samples[("pbkfs_operation_latency_microseconds_count", (("op", "read"),))] >= 1
        assert samples[("pbkfs_worker_up", (("worker", "0"),))] == 1
        assert ("pbkfs_worker_requests_total", (("worker", "1"),)) in samples

        pbkfs("stat", "-D", str(mnt), "--reset")
        zeroed = stat_json(mnt)
        assert zeroed["writes"]["bytes"] == 0 and zeroed["reads"]["bytes"] == 0
        assert zeroed["fsyncs"] == 0 and "write" not in zeroed["operations"]
        assert all(w["sent"] == 0 for w in zeroed["workers"])
        assert zeroed["diff_bytes"] >= 200_000  # a gauge: not reset
        assert zeroed["uptime_s"] >= after["uptime_s"]
    refused = pbkfs("stat", "-D", str(mnt), check=False)
    assert refused.returncode != 0 and "not a running pbkfs mount" in refused.stderr


def test_stat_refuses_a_plain_directory(tmp_path: Path) -> None:
    proc = pbkfs("stat", "-D", str(tmp_path), check=False)
    assert proc.returncode == 1
    assert "not a running pbkfs mount" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_parser_is_strict() -> None:
    ok = "# HELP pbkfs_x_total X.\n# TYPE pbkfs_x_total counter\npbkfs_x_total{a=\"b\"} 1\n"
    assert parse_prometheus(ok)[1] == {("pbkfs_x_total", (("a", "b"),)): 1.0}
    for bad in ["pbkfs_x_total 1\n", ok + "pbkfs_y 2\n", ok.replace('"b"', "b"),
                ok.replace(" 1\n", " one\n")]:
        with pytest.raises(AssertionError):
            parse_prometheus(bad)
