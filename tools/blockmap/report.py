"""Per file, per block: where its content comes from (a backup of the chain, or the diff).

Labels: a backup id (the newest layer of the chain holding that block), "diff"
(the block is in the diff's data file: its bit is set, or it lies at or past
the horizon a truncation left), "zero" (inside the size but no layer holds it:
reads as zeros), "computed" (content the view computes, e.g. the rewritten
postgresql.auto.conf), "base" (a plain-directory source).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import msgspec

from pbkfs.diff.blockmap import blocks_for
from pbkfs.fs.namespace import FsError, Namespace, Node
from pbkfs.fsutil import name_bytes
from tools.blockmap.state import DiffState, ObjMap

DIFF = "diff"
ZERO = "zero"
COMPUTED = "computed"
BASE = "base"


class FileReport(msgspec.Struct):
    path: str
    kind: str  # "datafile", "file" (a non-data backup file), "new" (created in the mount)
    size: int
    origin: str | None  # backup path the content starts from (None: created in the mount)
    renamed_from: str | None  # set when the file lives under another name than its origin
    links: int
    fid: int | None  # diff object id (None: never written: all from the backup)
    map: str | None  # where the block map was read: "shm", "disk", None
    horizon: int | None  # first block that never comes from the backup again
    base_blocks: int  # blocks of the backup's file
    truncated: bool  # a truncation hid backup blocks for good (horizon < base_blocks)
    blocks: list[str]  # one label per block
    runs: list[tuple[int, int, str]]  # (first, last, label), consecutive blocks merged
    counts: dict[str, int]


class Whiteout(msgspec.Struct):
    """A backup path whose object is no longer there (deleted, replaced or renamed away)."""

    path: str
    kind: str
    renamed_to: list[str]


class Summary(msgspec.Struct):
    files: int
    files_in_diff: int  # with a diff object
    new_files: int
    renamed: int
    truncated: int
    whiteouts: int
    blocks: int
    counts: dict[str, int]


class Report(msgspec.Struct):
    mode: str  # "live" or "offline"
    diff: str
    mountpoint: str | None
    source: dict[str, str]
    chain: list[str]  # target first
    block_size: int
    generation: int
    journal_records: int
    files: list[FileReport]
    whiteouts: list[Whiteout]
    summary: Summary
    problems: list[str]


def runs_of(labels: list[str]) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    for i, lab in enumerate(labels):
        if out and out[-1][2] == lab and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i, lab)
        else:
            out.append((i, i, lab))
    return out


class Classifier:
    """Backup-side labels per origin path (cached: block_sources walks page indexes)."""

    def __init__(self, view: Any, block_size: int) -> None:
        self.view = view
        self.bs = block_size
        self._cache: dict[str, list[str]] = {}

    def is_datafile(self, origin: str) -> bool:
        e = self.view.entry(origin)
        return bool(e is not None and e.is_datafile)

    def base(self, origin: str) -> list[str]:
        got = self._cache.get(origin)
        if got is not None:
            return got
        e = self.view.entry(origin)
        n = blocks_for(e.size, self.bs) if e is not None else 0
        labels: list[str]
        if e is not None and e.is_datafile and hasattr(self.view, "block_sources"):
            labels = [s if s is not None else ZERO for s in self.view.block_sources(origin)]
        elif hasattr(self.view, "stored_copy"):
            copy = self.view.stored_copy(origin)
            labels = [copy.backup.id if copy is not None else COMPUTED] * n
        else:
            labels = [BASE] * n
        self._cache[origin] = labels
        return labels


def _has(m: ObjMap, b: int) -> bool:
    if b >= m.horizon:
        return True
    i = b >> 3
    return i < len(m.bits) and bool(m.bits[i] & (1 << (b & 7)))


def file_report(path: str, node: Node, links: int, state: DiffState, cls: Classifier
                ) -> FileReport:
    bs = cls.bs
    n = blocks_for(node.size, bs)
    origin = node.origin
    base = cls.base(origin) if origin is not None else []
    m = state.maps.get(node.fid) if node.fid is not None else None
    horizon = m.horizon if m is not None else None
    labels: list[str] = []
    for b in range(n):
        if origin is None or (m is not None and _has(m, b)):
            labels.append(DIFF)
        elif node.fid is not None and m is None:
            labels.append(DIFF)  # an object without a readable map: everything is the diff's
        else:
            labels.append(base[b] if b < len(base) else ZERO)
    kind = "new" if origin is None else ("datafile" if cls.is_datafile(origin) else "file")
    return FileReport(
        path=path, kind=kind, size=node.size, origin=origin,
        renamed_from=origin if origin is not None and origin != path else None,
        links=links, fid=node.fid, map=m.where if m is not None else None,
        horizon=horizon, base_blocks=len(base),
        truncated=horizon is not None and horizon < len(base),
        blocks=labels, runs=runs_of(labels), counts=dict(Counter(labels)),
    )


def walk_files(ns: Namespace) -> list[tuple[str, Node]]:
    """Every regular file name of the tree (each hard link once), sorted by path."""
    return sorted(((p, n) for p, n in ns.walk() if n.kind == "f"), key=lambda t: t[0])


def whiteouts(state: DiffState, names: dict[str, Node]) -> list[Whiteout]:
    """Backup paths not showing their own object any more; children of a gone directory
    are implied by it and not listed."""
    by_origin: dict[str, list[str]] = {}
    for path, named in names.items():
        if named.origin is not None:
            by_origin.setdefault(named.origin, []).append(path)
    out: list[Whiteout] = []
    gone_dirs: set[str] = set()
    for e in state.source.entries():
        parts = e.path.split("/")
        if any("/".join(parts[:i]) in gone_dirs for i in range(1, len(parts))):
            continue
        try:
            node: Node | None = state.ns.resolve(e.path)
        except FsError:
            node = None
        if e.kind == "d":
            if node is None or node.kind != "d":
                gone_dirs.add(e.path)
                out.append(Whiteout(e.path, "d", []))
            continue
        if e.kind == "f" and node is not None and node.kind == "f" and node.origin == e.path:
            continue
        if e.kind == "l" and node is not None and node.kind == "l":
            continue
        moved = [p for p in by_origin.get(e.path, []) if p != e.path] if e.kind == "f" else []
        out.append(Whiteout(e.path, e.kind, moved))
    return out


def _select(files: list[tuple[str, Node]], wanted: list[str]) -> tuple[list[tuple[str, Node]],
                                                                       list[str]]:
    if not wanted:
        return files, []
    norm = [os.path.normpath(w).lstrip("/") for w in wanted]
    norm = ["" if w == "." else w for w in norm]
    chosen = [(p, n) for p, n in files
              if any(w == "" or p == w or p.startswith(w + "/") for w in norm)]
    matched = {w for w in norm for p, _ in chosen if w == "" or p == w or p.startswith(w + "/")}
    return chosen, [w for w in norm if w not in matched]


def build_report(state: DiffState, wanted: list[str], mode: str, mountpoint: str | None
                 ) -> Report:
    bs = int(state.source.block_size)
    cls = Classifier(state.source.view, bs)
    files = walk_files(state.ns)
    names = dict(files)
    counts_links = Counter(id(n) for _, n in files)
    chosen, unmatched = _select(files, wanted)
    reports = [file_report(p, n, counts_links[id(n)], state, cls) for p, n in chosen]
    wos = whiteouts(state, names)
    if wanted:
        norm = [os.path.normpath(w).lstrip("/") for w in wanted]
        wos = [w for w in wos if any(w.path == x or w.path.startswith(x + "/") or x in ("", ".")
                                     or x.startswith(w.path + "/") for x in norm)]
        still = [w for w in unmatched if not any(x.path == w or w.startswith(x.path + "/")
                                                 for x in wos)]
        if still:
            from pbkfs.errors import UsageError

            raise UsageError(f"no such file in the mount's namespace: {', '.join(still)}")
    total: Counter[str] = Counter()
    for r in reports:
        total.update(r.counts)
    spec = state.binding.source
    source = {k: v for k, v in msgspec.structs.asdict(spec).items() if v}
    summary = Summary(
        files=len(reports),
        files_in_diff=sum(1 for r in reports if r.fid is not None),
        new_files=sum(1 for r in reports if r.kind == "new"),
        renamed=sum(1 for r in reports if r.renamed_from is not None),
        truncated=sum(1 for r in reports if r.truncated),
        whiteouts=len(wos),
        blocks=sum(len(r.blocks) for r in reports),
        counts=dict(total),
    )
    return printable(Report(
        mode=mode, diff=state.diff.path, mountpoint=mountpoint, source=source,
        chain=list(state.binding.chain), block_size=bs, generation=state.generation,
        journal_records=state.replayed, files=reports, whiteouts=wos, summary=summary,
        problems=list(state.problems),
    ))


def shown(text: str) -> str:
    """`text` as valid UTF-8: the bytes of a name that are not UTF-8 (kept as lone
    surrogates) shown as \\xNN."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return name_bytes(text).decode("utf-8", "backslashreplace")
    return text


def printable(rep: Report) -> Report:
    """The report with every path and message shown (every output format needs UTF-8)."""
    for r in rep.files:
        r.path = shown(r.path)
        r.origin = shown(r.origin) if r.origin is not None else None
        r.renamed_from = shown(r.renamed_from) if r.renamed_from is not None else None
    for w in rep.whiteouts:
        w.path = shown(w.path)
        w.renamed_to = [shown(p) for p in w.renamed_to]
    rep.diff = shown(rep.diff)
    rep.mountpoint = shown(rep.mountpoint) if rep.mountpoint is not None else None
    rep.source = {k: shown(v) for k, v in rep.source.items()}
    rep.problems = [shown(p) for p in rep.problems]
    return rep
