"""A strict reader of Prometheus's text exposition format (for `pbkfs stat`)."""

from __future__ import annotations

import re

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
