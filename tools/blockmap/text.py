"""Plain-text rendering: one line per file with its block runs, then the summary."""

from __future__ import annotations

from tools.blockmap.report import FileReport, Report


def _runs(r: FileReport, limit: int = 12) -> str:
    parts = [f"{a}-{b} {lab}" if a != b else f"{a} {lab}" for a, b, lab in r.runs]
    if len(parts) > limit:
        parts = parts[:limit] + [f"... ({len(r.runs) - limit} more runs)"]
    return ", ".join(parts) if parts else "(empty)"


def render_text(rep: Report) -> str:
    lines = [
        f"{rep.mode} {'mount ' + rep.mountpoint if rep.mountpoint else 'diff'}: "
        f"diff {rep.diff}",
        "source: " + " ".join(f"{k}={v}" for k, v in rep.source.items()),
        f"chain: {' <- '.join(rep.chain) if rep.chain else '-'}  block size {rep.block_size}",
        f"namespace: generation {rep.generation}, {rep.journal_records} journal records",
        "",
    ]
    for r in rep.files:
        notes = [r.kind, f"{r.size} bytes", f"{len(r.blocks)} blocks"]
        if r.fid is not None:
            notes.append(f"object {r.fid}" + (f" (map from {r.map})" if r.map else ""))
        if r.horizon is not None:
            notes.append(f"horizon {r.horizon}" + (" (truncated)" if r.truncated else ""))
        if r.renamed_from:
            notes.append(f"renamed from {r.renamed_from}")
        if r.links > 1:
            notes.append(f"{r.links} links")
        lines.append(f"{r.path}  [{', '.join(notes)}]")
        lines.append(f"    {_runs(r)}")
    if rep.whiteouts:
        lines.append("")
        lines.append("whiteouts (backup paths no longer shown):")
        for w in rep.whiteouts:
            to = f" -> renamed to {', '.join(w.renamed_to)}" if w.renamed_to else ""
            lines.append(f"    {w.path} ({w.kind}){to}")
    s = rep.summary
    lines += [
        "",
        f"summary: {s.files} files, {s.files_in_diff} with a diff object, {s.new_files} new, "
        f"{s.renamed} renamed, {s.truncated} truncated, {s.whiteouts} whiteouts",
        f"blocks: {s.blocks} total; " + ", ".join(
            f"{lab} {n}" for lab, n in sorted(s.counts.items(), key=lambda t: -t[1])),
    ]
    for p in rep.problems:
        lines.append(f"problem: {p}")
    return "\n".join(lines) + "\n"
