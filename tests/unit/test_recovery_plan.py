"""Choosing the backup for a target, the WAL it uses, the archive pre-check, the recovery files
(byte for byte what pg_probackup restore wrote) and the recovery status of a data directory."""

from __future__ import annotations

import os
import re
import struct
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pbkfs.catalog.store import Store
from pbkfs.errors import CatalogError, UsageError
from pbkfs.recovery import (
    RecoveryTarget,
    check_archive_covers,
    default_program,
    inspect_recovery,
    inspect_recovery_dir,
    parse_target,
    plan_recovery,
    recovery_files,
    require_archive_covers,
    restore_command,
)
from pbkfs.recovery.files import format_time, recovery_settings
from pbkfs.view import open_view
from pbkfs.view.export import export_tree
from tests.support.wal import archive_copy, multi_timeline_archive


@pytest.fixture()
def tz() -> Iterator[object]:
    """Set the host's time zone for a test: tz("Asia/Kolkata")."""
    old = os.environ.get("TZ")

    def set_tz(name: str) -> None:
        os.environ["TZ"] = name
        time.tzset()

    yield set_tz
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


def arch(fixtures_dir: Path) -> Store:
    return Store(fixtures_dir / "pg15-archive" / "catalog")


# TP2MRO: stop 0/17000B8, recovery-time 18:45:25, recovery-xid 785
# TP2MRQ: stop 0/1B000B8, recovery-time 18:45:27, recovery-xid 991
# TP2MRW: stop 0/1F22560, recovery-time 18:45:33, recovery-xid 1289; archive ends with ...21
CHOICES = [
    ({}, "TP2MRW"),
    ({"target": "immediate"}, "TP2MRW"),
    ({"target": "latest"}, "TP2MRW"),
    ({"name": "before deploy"}, "TP2MRW"),
    ({"time": "2026-11-25 18:45:34+00"}, "TP2MRW"),
    ({"time": "2026-11-25 21:45:34+03"}, "TP2MRW"),
    # inside TP2MRW's second: its WAL says whether a transaction ended after the target
    # before its consistent point (the last one there ended at 18:45:33.485246)
    ({"time": "2026-11-25 18:45:33.9+00"}, "TP2MRW"),
    ({"time": "2026-11-25 18:45:33.485246+00"}, "TP2MRW"),
    ({"time": "2026-11-25 18:45:33.485246+00", "inclusive": "false"}, "TP2MRQ"),
    ({"time": "2026-11-25 18:45:33.3+00"}, "TP2MRQ"),
    ({"time": "2026-11-25 18:45:28+00"}, "TP2MRQ"),
    ({"time": "2026-11-25 18:45:27.999999+00"}, "TP2MRQ"),
    ({"time": "2026-11-25 18:45:26+00"}, "TP2MRO"),
    ({"time": "2026-11-25 13:45:26-05"}, "TP2MRO"),
    ({"time": "2026-11-25 18:45:25.5+00"}, "TP2MRO"),
    ({"time": "2026-11-25 18:45:41.4+00"}, "TP2MRW"),  # the archive's last: 18:45:41.439275
    ({"time": "2026-11-25 18:45:41.439275+00", "inclusive": "false"}, "TP2MRW"),
    ({"xid": "5000"}, "TP2MRW"),
    ({"xid": "1289"}, "TP2MRW"),
    ({"xid": "1288"}, "TP2MRQ"),
    ({"xid": "991"}, "TP2MRQ"),
    ({"xid": "990"}, "TP2MRO"),
    ({"xid": "785"}, "TP2MRO"),
    ({"lsn": "0/21FFFFF"}, "TP2MRW"),
    ({"lsn": "0/1F22560"}, "TP2MRW"),
    ({"lsn": "0/1F2255F"}, "TP2MRQ"),
    ({"lsn": "0/1B000B8"}, "TP2MRQ"),
    ({"lsn": "0/17000B8"}, "TP2MRO"),
]


@pytest.mark.parametrize(("kwargs", "backup_id"), CHOICES)
def test_backup_choice(fixtures_dir: Path, kwargs: dict[str, str], backup_id: str) -> None:
    plan = plan_recovery(arch(fixtures_dir).instance("arch"), parse_target(**kwargs))
    assert plan.backup.id == backup_id, plan.describe()
    assert plan.recovery and not plan.missing
    assert plan.chain[-1] == "TP2MRO" and plan.chain[0] == backup_id
    assert not any("in the second" in n for n in plan.notes)
    assert backup_id in plan.describe()
    if "time" in kwargs:
        assert "the archive's last transaction ended at 2026-11-25 18:45:41.439275+00:00 " \
            "(segment 000000010000000000000021)" in plan.notes


@pytest.mark.parametrize(("time_text", "backup_id", "note"), [
    ("2026-11-25 18:45:33.9+00", "TP2MRQ", False),  # not provable from the second alone
    ("2026-11-25 18:45:27.5+00", "TP2MRO", False),
    ("2026-11-25 18:45:25.5+00", "TP2MRO", True),  # only candidate: used, with a note
])
def test_backup_choice_without_reading_wal(fixtures_dir: Path, time_text: str, backup_id: str,
                                           note: bool) -> None:
    plan = plan_recovery(arch(fixtures_dir).instance("arch"), parse_target(time=time_text),
                         scan=False)
    assert plan.backup.id == backup_id
    assert any("in the second" in n for n in plan.notes) == note
    assert any("recovery ended before configured recovery target" in n for n in plan.notes)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"time": "2026-11-25 18:45:24.99+00"}, "no backup of instance 'arch' can reach"),
    ({"time": "2025-01-01 00:00:00+00"}, "consistent only at 2026-11-25 18:45:25"),
    ({"xid": "784"}, "consistent only after xid 784"),
    ({"lsn": "0/17000B7"}, "consistent only at 0/17000B8"),
    ({"lsn": "0/2200000"}, "beyond the archive"),
    ({"time": "2026-11-25 18:45:41.439275+00"}, "beyond the archive: the last transaction in the "
     "WAL from backup TP2MRW ended at 2026-11-25 18:45:41.439275"),
    ({"time": "2026-11-25 22:00:00+00"}, "beyond the archive"),
    ({"time": "2026-11-25 18:45:42+00", "timeline": "current"}, "segment 000000010000000000000021"),
    ({"lsn": "1/0"}, "unbroken only up to 000000010000000000000021"),
    ({"xid": "5", "timeline": "2"}, "no history file for timeline 2"),
])
def test_unreachable_targets(fixtures_dir: Path, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        plan_recovery(arch(fixtures_dir).instance("arch"), parse_target(**kwargs))


def test_explicit_backup(fixtures_dir: Path) -> None:
    instance = arch(fixtures_dir).instance("arch")
    plan = plan_recovery(instance, parse_target(target="latest"), "tp2mro")
    assert plan.backup.id == "TP2MRO"
    assert (plan.wal_first, plan.wal_last, plan.archive_end) == (
        "000000010000000000000016", "000000010000000000000021", "000000010000000000000021")
    with pytest.raises(UsageError, match="before the consistent point of backup TP2MRQ"):
        plan_recovery(instance, parse_target(time="2026-11-25 18:45:26+00"), "TP2MRQ")
    plan = plan_recovery(instance, parse_target(time="2026-11-25 18:45:27.3+00"), "TP2MRQ")
    assert plan.backup.id == "TP2MRQ" and not any("in the second" in n for n in plan.notes)
    with pytest.raises(UsageError, match="after a transaction that ended at 2026-11-25 "
                                         "18:45:33.485246"):
        plan_recovery(instance, parse_target(time="2026-11-25 18:45:33.2+00"), "TP2MRW")
    with pytest.raises(CatalogError, match="no backup 'ZZZZZZ'"):
        plan_recovery(instance, parse_target(), "ZZZZZZ")


def test_defaults_and_wal_ranges(fixtures_dir: Path) -> None:
    instance = arch(fixtures_dir).instance("arch")
    plan = plan_recovery(instance, parse_target(), "TP2MRQ")
    assert (plan.target.stop, plan.target.action, plan.requested.kind) == \
        ("immediate", "promote", None)
    assert (plan.wal_first, plan.wal_last) == ("00000001000000000000001A",
                                               "00000001000000000000001B")
    plan = plan_recovery(instance, parse_target(target="immediate"), "TP2MRQ")
    assert plan.target.action is None  # explicit target: restore's default (pause) applies
    plan = plan_recovery(instance, parse_target(lsn="0/1D00010"), "TP2MRQ")
    assert plan.wal_last == "00000001000000000000001D" and plan.timeline == 1
    plan = plan_recovery(instance, parse_target(xid="2000"))
    assert plan.wal_last == "000000010000000000000021" and plan.notes
    text = plan.describe()
    assert "WAL 00000001000000000000001E .. 000000010000000000000021" in text


def test_stream_backups(fixtures_dir: Path) -> None:
    store = Store(fixtures_dir / "pg15" / "catalog")
    main = store.instance("main")
    plan = plan_recovery(main, parse_target())
    assert plan.backup.id == "TP2KCC" and not plan.recovery and plan.target.kind is None
    assert recovery_files(plan, store.root, program="/x/pbkfs").empty
    assert "no recovery target" in plan.describe()
    plan = plan_recovery(main, parse_target(timeline="current"), "TP2KBJ")
    assert not plan.recovery and "ignored" in plan.notes[0]
    plan = plan_recovery(main, parse_target(target="immediate"), "TP2KBJ")
    assert plan.recovery and plan.wal_last == "000000010000000000000020"
    files = recovery_files(plan, store.root, program="/x/pbkfs")
    assert "recovery_target = 'immediate'" in files.auto_conf_append.decode()
    plan = plan_recovery(main, parse_target(xid="1500"))
    assert plan.backup.id == "TP2KBV"
    nochk = store.instance("nochk")  # no WAL archive at all: only the backups' own WAL
    plan = plan_recovery(nochk, parse_target(target="latest"))
    assert plan.archive_end == "00000001000000000000000B" and plan.wal_last == plan.archive_end
    with pytest.raises(UsageError, match="beyond the archive"):
        plan_recovery(nochk, parse_target(lsn="0/C00000"))


def test_timelines(fixtures_dir: Path, tmp_path: Path) -> None:
    store = multi_timeline_archive(fixtures_dir, tmp_path / "cat")  # 19 lost, tli 2 at 0/1C00000
    instance = store.instance("arch")
    plan = plan_recovery(instance, parse_target(xid="1000", timeline="2"))
    # TP2MRW (timeline 1, stopped after the fork) is not on timeline 2's history
    assert plan.backup.id == "TP2MRQ" and plan.timeline == 2
    assert plan.archive_end == "00000002000000000000001E"
    plan = plan_recovery(instance, parse_target(lsn="0/1D80000", timeline="2"))
    assert plan.backup.id == "TP2MRQ" and plan.wal_last == "00000002000000000000001D"
    with pytest.raises(UsageError, match="beyond the archive"):
        plan_recovery(instance, parse_target(lsn="0/1F00000", timeline="2"))
    with pytest.raises(UsageError, match="not on the history of timeline 2"):
        plan_recovery(instance, parse_target(xid="1000", timeline="2"), "TP2MRW")
    plan = plan_recovery(instance, parse_target(target="latest"), "TP2MRO")
    assert plan.timeline == 3 and plan.archive_end == "000000010000000000000018"  # 19 is lost
    plan = plan_recovery(instance, parse_target(target="latest"), "TP2MRQ")
    # segment 1E lies after timeline 3's fork (0/1E80000): it is read from timeline 3, absent
    assert plan.archive_end == "00000002000000000000001D"


def test_archive_pre_check(fixtures_dir: Path, tmp_path: Path) -> None:
    store = arch(fixtures_dir)
    instance = store.instance("arch")
    for backup in instance.newest_first():
        assert check_archive_covers(instance, backup) == []
        require_archive_covers(instance, backup)
    catalog = archive_copy(fixtures_dir, tmp_path / "cat")
    wal = catalog / "wal" / "arch"
    (wal / "000000010000000000000017.gz").unlink()
    (wal / "00000001000000000000001F.gz").write_bytes(
        (wal / "00000001000000000000001E.gz").read_bytes())
    copy = Store(catalog).instance("arch")
    full, page, delta = (copy.backup(i) for i in ("TP2MRO", "TP2MRQ", "TP2MRW"))
    assert [str(p) for p in check_archive_covers(copy, full)] == \
        ["000000010000000000000017: missing"]
    assert check_archive_covers(copy, page) == []
    [problem] = check_archive_covers(copy, delta)
    assert problem.segment == "00000001000000000000001F" and "wrong segment content" in \
        problem.problem
    assert check_archive_covers(copy, delta, verify=False) == []
    with pytest.raises(CatalogError, match="000000010000000000000017: missing"):
        require_archive_covers(copy, full)
    plan = plan_recovery(copy, parse_target(), "TP2MRO")
    assert plan.missing == ("000000010000000000000017",)
    with pytest.raises(CatalogError, match="cannot become consistent.*000000010000000000000017"):
        plan.require_wal()
    stream = Store(fixtures_dir / "pg15" / "catalog").instance("nochk")
    assert check_archive_covers(stream, stream.backup("TP2KD0")) == []


def fixture_blocks(fixtures_dir: Path) -> dict[str, str]:
    """The text restore appended to postgresql.auto.conf, per label, from generation.log."""
    log = (fixtures_dir / "pg15-archive" / "generation.log").read_text()
    out = {}
    for m in re.finditer(r"RESTORE-WROTE label=(\S+):.*?postgresql\.auto\.conf (\d+) bytes, "
                         r"appended:\n((?:    \| .*\n)+)", log):
        text = "\n" + "".join(line[6:] + "\n" for line in m.group(3).splitlines())
        out[m.group(1)] = text
        assert 88 + len(text.encode()) == int(m.group(2))  # stock file + appended text
    return out


def test_recovery_files_are_what_restore_wrote(fixtures_dir: Path, tz) -> None:  # type: ignore[no-untyped-def]
    tz("UTC")
    blocks = fixture_blocks(fixtures_dir)
    instance = arch(fixtures_dir).instance("arch")
    program = "/tmp/pgpb/bin/pg_probackup"
    stage = "/tmp/pbkfs-fixture-work/pg15-archive/stage/catalog"
    for backup_id in ("TP2MRO", "TP2MRQ", "TP2MRW"):
        label = f"{backup_id}.immediate"
        stamp = re.search(r"at '([^']+)'", blocks[label])
        assert stamp is not None
        when = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S+00").replace(tzinfo=UTC)
        plan = plan_recovery(instance, parse_target(), backup_id)  # ARCHIVE default
        files = recovery_files(plan, stage, program=program, now=when,
                               origin="pg_probackup restore")
        assert files.auto_conf_append.decode() == blocks[label]
        assert files.create == {"recovery.signal": b""}
        # restore (b), no options: timeline 'current', action 'pause'
        latest = blocks[f"{backup_id}.latest"]
        settings = recovery_settings(RecoveryTarget(), restore_command(program, stage, "arch"))
        assert latest.endswith(settings)
    plan = plan_recovery(instance, parse_target(target="latest"))
    text = recovery_files(plan, stage, program=program, now=when).auto_conf_append.decode()
    assert "recovery_target_timeline = 'latest'\nrecovery_target_action = 'pause'\n" in text
    assert text.startswith("\n# recovery settings added by pbkfs mount of backup TP2MRW at '")


def test_every_setting_in_restore_order(fixtures_dir: Path) -> None:
    cmd = restore_command("/p/pbkfs", "/c", "i")
    text = recovery_settings(parse_target(time="2026-11-25 18:45:33.25+03", inclusive="false",
                                          timeline="3", action="shutdown"), cmd)
    assert text == ("## recovery settings\n"
                    "recovery_target_time = '2026-11-25 18:45:33.250000+03:00'\n"
                    "recovery_target_inclusive = 'false'\n"
                    "recovery_target_timeline = '3'\n"
                    "recovery_target_action = 'shutdown'\n"
                    f"restore_command = '{cmd}'\n")
    assert "recovery_target_name = 'it''s'\n" in recovery_settings(parse_target(name="it's"), cmd)
    assert "recovery_target_xid = '77'\n" in recovery_settings(parse_target(xid="77"), cmd)
    assert "recovery_target_lsn = '0/1F22560'\n" in \
        recovery_settings(parse_target(lsn="0/1f22560"), cmd)


def test_restore_command_quoting() -> None:
    assert restore_command("/usr/bin/pbkfs", "/b/cat", "main") == (
        '"/usr/bin/pbkfs" archive-get -B "/b/cat" --instance "main" '
        "--wal-file-path=%p --wal-file-name=%f")
    cmd = restore_command("/opt/100%/pbkfs", "/b/it's", "in st")
    assert '"/opt/100%%/pbkfs"' in cmd and '"/b/it\'s"' in cmd and '"in st"' in cmd
    assert "restore_command = '\"/opt/100%%/pbkfs\" archive-get -B \"/b/it''s\"" in \
        recovery_settings(RecoveryTarget(), cmd)
    for bad in ('/a"b', "/a$b", "/a`b", "/a\\b", "/a\nb"):
        with pytest.raises(UsageError, match="restore_command cannot quote"):
            restore_command(bad, "/b", "i")
    assert restore_command("/p", "relative/cat", "i").split('"')[3] == \
        os.path.abspath("relative/cat")


def test_time_stamp_in_local_time(tz) -> None:  # type: ignore[no-untyped-def]
    when = datetime(2026, 11, 25, 18, 45, 42, tzinfo=UTC)
    for zone, text in (("UTC", "2026-11-25 18:45:42+00"),
                       ("Asia/Kolkata", "2026-11-26 00:15:42+05:30"),
                       ("America/New_York", "2026-11-25 13:45:42-05")):
        tz(zone)
        assert format_time(when) == text


def test_default_program(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PBKFS_PROGRAM", "/opt/pbkfs/bin/pbkfs")
    assert default_program() == "/opt/pbkfs/bin/pbkfs"
    monkeypatch.delenv("PBKFS_PROGRAM")
    script = tmp_path / "pbkfs"
    script.write_text("#!/bin/sh\n")
    monkeypatch.setattr("sys.argv", [str(script), "mount"])
    assert default_program() == str(script)
    monkeypatch.setattr("sys.argv", ["python", "-m"])
    monkeypatch.setenv("PATH", str(tmp_path))
    script.chmod(0o755)
    assert default_program() == str(script)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UsageError, match="PBKFS_PROGRAM"):
        default_program()


def test_recovery_status(fixtures_dir: Path, tmp_path: Path) -> None:
    store = arch(fixtures_dir)
    data = tmp_path / "data"
    export_tree(open_view(store, "arch", "TP2MRO"), data)
    status = inspect_recovery_dir(data)
    assert (status.db_state, status.timeline, status.backup_label) == (6, 1, True)
    assert not status.finished and not status.started
    plan = plan_recovery(store.instance("arch"), parse_target(), "TP2MRO")
    recovery_files(plan, store.root, program="/p/pbkfs").apply_to(data)
    assert (data / "recovery.signal").stat().st_size == 0
    assert b"recovery_target = 'immediate'" in (data / "postgresql.auto.conf").read_bytes()
    status = inspect_recovery_dir(data)
    assert status.recovery_signal and not status.finished
    assert "recovery not finished" in status.describe()

    files = {"global/pg_control": bytearray((data / "global" / "pg_control").read_bytes())}

    def read(rel: str) -> bytes | None:
        value = files.get(rel)
        return None if value is None else bytes(value)

    struct.pack_into("<iI", files["global/pg_control"], 16, 5, 0)  # in archive recovery
    struct.pack_into("<I", files["global/pg_control"], 48, 1)
    files["recovery.signal"] = bytearray()
    status = inspect_recovery(read)
    assert status.started and not status.finished and status.db_state == 5
    del files["recovery.signal"]
    struct.pack_into("<i", files["global/pg_control"], 16, 6)
    struct.pack_into("<I", files["global/pg_control"], 48, 2)
    status = inspect_recovery(read)
    assert status.finished and status.timeline == 2
    assert status.describe().startswith("recovery finished: pg_control says 'in production'")
    files["standby.signal"] = bytearray()
    assert not inspect_recovery(read).finished
    assert inspect_recovery(lambda rel: None).db_state is None
