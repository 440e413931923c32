"""The heap trimmer: trims while work is being done, leaves an idle process alone."""

from __future__ import annotations

import time

import pytest

import pbkfs.memtrim as memtrim


def test_trim_calls_glibc() -> None:
    assert memtrim._trim is not None, "glibc's malloc_trim not found"
    memtrim.trim()  # releases what is free; must not fail


def test_trimmer_trims_only_after_work(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    monkeypatch.setattr(memtrim, "trim", lambda: calls.append(time.monotonic()))
    work = [0]
    memtrim.start_trimmer(lambda: work[0], period=0.01)
    time.sleep(0.2)
    assert calls == [], "an idle process was trimmed"
    work[0] += 1
    deadline = time.monotonic() + 30
    while not calls:
        assert time.monotonic() < deadline, "work was done but nothing was trimmed"
        time.sleep(0.01)
    n = len(calls)
    time.sleep(0.2)
    assert len(calls) == n, "trimmed again without new work"
