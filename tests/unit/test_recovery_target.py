"""Recovery-target options: pg_probackup's names, values and mutual exclusions."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import click
import pytest
from click.testing import CliRunner

from pbkfs.errors import UsageError
from pbkfs.recovery.options import recovery_target_options, target_from_options
from pbkfs.recovery.target import RecoveryTarget, parse_target, parse_time


@pytest.fixture()
def local_tz() -> Iterator[None]:
    """Run with the host's local time zone set to UTC+03:00 (no DST)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Etc/GMT-3"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-25 18:45:33+00", datetime(2026, 11, 25, 18, 45, 33, tzinfo=UTC)),
    ("2026-11-25 18:45:33.25+00", datetime(2026, 11, 25, 18, 45, 33, 250000, tzinfo=UTC)),
    ("2026-11-25T18:45:33.123456Z", datetime(2026, 11, 25, 18, 45, 33, 123456, tzinfo=UTC)),
    ("2026-11-25 21:45:33.5+03", datetime(2026, 11, 25, 18, 45, 33, 500000, tzinfo=UTC)),
    ("2026-11-26 00:15:33+05:30", datetime(2026, 11, 25, 18, 45, 33, tzinfo=UTC)),
    ("2026-11-25 10:45:33-0800", datetime(2026, 11, 25, 18, 45, 33, tzinfo=UTC)),
    ("2026-11-25 18:45:33 UTC", datetime(2026, 11, 25, 18, 45, 33, tzinfo=UTC)),
    ("  2026-11-25   18:45:33.1  GMT ", datetime(2026, 11, 25, 18, 45, 33, 100000, tzinfo=UTC)),
])
def test_times_with_fractions_and_offsets(text: str, expected: datetime) -> None:
    value = parse_time(text)
    assert value == expected and value.tzinfo is not None


def test_time_without_offset_is_local_and_written_with_one(local_tz: None) -> None:
    target = parse_target(time="2026-11-25 21:45:33.5")
    assert target.time == datetime(2026, 11, 25, 18, 45, 33, 500000, tzinfo=UTC)
    assert target.time_text == "2026-11-25 21:45:33.500000+03:00"
    assert parse_target(time="2026-11-25 18:45:33+00").time_text == "2026-11-25 18:45:33+00:00"


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01 00:00:00", "2026-11-25 25:00",
                                  "", "18:45:33"])
def test_bad_times(text: str) -> None:
    with pytest.raises(UsageError, match="--recovery-target-time: cannot read"):
        parse_target(time=text)


@pytest.mark.parametrize(("kwargs", "kind", "check"), [
    ({"target": "immediate"}, "immediate", lambda t: t.stop == "immediate"),
    ({"target": "latest"}, "latest", lambda t: t.stop == "latest"),
    ({"xid": "1289"}, "xid", lambda t: t.xid == 1289),
    ({"xid": str(2**40)}, "xid", lambda t: t.xid == 2**40),
    ({"lsn": "0/1F22560"}, "lsn", lambda t: t.lsn == 0x1F22560),
    ({"lsn": "1/0"}, "lsn", lambda t: t.lsn == 1 << 32),
    ({"name": "before deploy"}, "name", lambda t: t.name == "before deploy"),
    ({"time": "2026-11-25 18:45:33+00", "inclusive": "false"}, "time",
     lambda t: t.inclusive is False),
    ({"xid": "5", "inclusive": "on"}, "xid", lambda t: t.inclusive is True),
    ({"lsn": "0/5", "inclusive": True}, "lsn", lambda t: t.inclusive is True),
    ({"target": "immediate", "action": "promote"}, "immediate", lambda t: t.action == "promote"),
    ({"name": "x", "action": "shutdown"}, "name", lambda t: t.action == "shutdown"),
    ({"target": "latest", "timeline": "latest"}, "latest", lambda t: t.timeline == "latest"),
    ({"xid": "7", "timeline": "03"}, "xid", lambda t: t.timeline == "3"),
    ({"timeline": "current"}, None, lambda t: t.timeline == "current"),
    ({}, None, lambda t: t == RecoveryTarget()),
])
def test_valid_options(kwargs: dict, kind: str | None, check) -> None:  # type: ignore[no-untyped-def]
    target = parse_target(**kwargs)
    assert target.kind == kind and check(target)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"target": "immediate", "xid": "5"}, "at most one of"),
    ({"time": "2026-11-25 18:45:33+00", "lsn": "0/1"}, "at most one of"),
    ({"name": "a", "target": "latest"}, "at most one of"),
    ({"target": "earliest"}, "is not 'immediate' or 'latest'"),
    ({"xid": "abc"}, "--recovery-target-xid"),
    ({"xid": "0"}, "--recovery-target-xid"),
    ({"xid": "-3"}, "--recovery-target-xid"),
    ({"xid": str(2**64)}, "--recovery-target-xid"),
    ({"lsn": "1A2B"}, "--recovery-target-lsn"),
    ({"lsn": "0/1G"}, "--recovery-target-lsn"),
    ({"lsn": "100000000/0"}, "--recovery-target-lsn"),
    ({"name": ""}, "--recovery-target-name"),
    ({"name": "x" * 64}, "--recovery-target-name"),
    ({"inclusive": "true"}, "applies only with"),
    ({"target": "immediate", "inclusive": "false"}, "applies only with"),
    ({"name": "x", "inclusive": "false"}, "applies only with"),
    ({"xid": "5", "inclusive": "maybe"}, "not a boolean"),
    ({"action": "promote"}, "needs a recovery target"),
    ({"timeline": "current", "action": "pause"}, "needs a recovery target"),
    ({"target": "latest", "action": "resume"}, "is not one of pause, promote, shutdown"),
    ({"xid": "5", "timeline": "newest"}, "--recovery-target-timeline"),
    ({"xid": "5", "timeline": "0"}, "--recovery-target-timeline"),
])
def test_invalid_options(kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(UsageError, match=message):
        parse_target(**kwargs)


def test_describe() -> None:
    assert parse_target().describe() == "no recovery target"
    text = parse_target(lsn="0/1F22560", inclusive="false", timeline="2",
                        action="promote").describe()
    assert text == "recovery target LSN 0/1F22560 (exclusive), timeline 2, then promote"
    assert "time '2026-11-25 18:45:33.250000+00:00'" in \
        parse_target(time="2026-11-25 18:45:33.25Z").describe()
    t = parse_target().with_defaults("immediate", "promote")
    assert (t.stop, t.action) == ("immediate", "promote")
    t = parse_target(target="immediate", action="pause").with_defaults("immediate", "promote")
    assert t.action == "pause"


def test_click_options() -> None:
    seen: list[RecoveryTarget] = []

    @click.command()
    @click.option("--other")
    @recovery_target_options
    def cmd(other: str | None, **kwargs: object) -> None:
        seen.append(target_from_options(kwargs))
        assert kwargs == {}  # every recovery option was taken

    result = CliRunner().invoke(cmd, ["--recovery-target-time", "2026-11-25 18:45:33.5+03",
                                      "--recovery-target-inclusive", "false",
                                      "--recovery-target-action", "promote",
                                      "--recovery-target-timeline", "latest"])
    assert result.exit_code == 0, result.output
    t = seen[-1]
    assert t.time == datetime(2026, 11, 25, 15, 45, 33, 500000, tzinfo=UTC)
    assert (t.inclusive, t.action, t.timeline) == (False, "promote", "latest")
    result = CliRunner().invoke(cmd, ["--recovery-target", "latest", "--recovery-target-xid", "5"])
    assert isinstance(result.exception, UsageError)
    result = CliRunner().invoke(cmd, ["--help"])
    for option in ("--recovery-target ", "--recovery-target-time", "--recovery-target-xid",
                   "--recovery-target-lsn", "--recovery-target-name",
                   "--recovery-target-inclusive", "--recovery-target-timeline",
                   "--recovery-target-action"):
        assert option in result.output


@pytest.mark.parametrize("kwargs", [
    {}, {"target": "immediate", "action": "promote"}, {"target": "latest", "timeline": "latest"},
    {"time": "2026-11-25 18:45:33.25+05:30", "inclusive": "false", "action": "pause"},
    {"xid": "1289", "timeline": "2"}, {"lsn": "0/1F22560", "action": "shutdown"},
    {"name": "it's a name"},
])
def test_as_options_round_trip(kwargs: dict[str, str]) -> None:
    target = parse_target(**kwargs)
    assert parse_target(**target.as_options()) == target
