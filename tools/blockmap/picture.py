"""The picture's layout, shared by the SVG and PNG renderers: one strip per file.

Each strip has one cell per block (narrow cells when a file has many blocks;
past the strip width a cell covers several blocks and shows "diff" if any of
them is in the diff, else the label most of them have). Colours: the diff in
red, each backup of the chain in its own colour (oldest first), zeros light.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from tools.blockmap.report import BASE, COMPUTED, DIFF, ZERO, Report

STRIP_WIDTH = 720
LABEL_WIDTH = 360
ROW = 16
CELL_H = 11
MARGIN = 10
HEADER = 40
MAX_CELL = 12

FIXED = {DIFF: "#d62728", ZERO: "#e6e6e6", COMPUTED: "#9e9e9e", BASE: "#7f7f7f"}
PALETTE = ["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf", "#8c564b", "#bcbd22",
           "#e377c2", "#393b79", "#637939"]


@dataclass
class Cell:
    x: int
    w: int
    label: str


@dataclass
class Strip:
    path: str
    x0: int
    y: int
    blocks: int
    cells: list[Cell]


@dataclass
class Layout:
    width: int
    height: int
    title: str
    colours: dict[str, str]
    legend: list[tuple[str, str]]
    strips: list[Strip]


def colours_for(rep: Report) -> dict[str, str]:
    out = dict(FIXED)
    for i, bid in enumerate(reversed(rep.chain)):  # the FULL backup first
        out[bid] = PALETTE[i % len(PALETTE)]
    for f in rep.files:
        for lab in f.counts:
            if lab not in out:
                out[lab] = PALETTE[len(out) % len(PALETTE)]
    return out


def cells_for(labels: list[str], x0: int) -> list[Cell]:
    n = len(labels)
    if n == 0:
        return []
    if n * 1 <= STRIP_WIDTH:
        w = max(1, min(MAX_CELL, STRIP_WIDTH // n))
        cells: list[Cell] = []
        for i, lab in enumerate(labels):
            if cells and cells[-1].label == lab:
                cells[-1].w += w
            else:
                cells.append(Cell(x0 + i * w, w, lab))
        return cells
    out: list[Cell] = []
    for col in range(STRIP_WIDTH):
        chunk = labels[col * n // STRIP_WIDTH : (col + 1) * n // STRIP_WIDTH]
        lab = DIFF if DIFF in chunk else Counter(chunk).most_common(1)[0][0]
        if out and out[-1].label == lab:
            out[-1].w += 1
        else:
            out.append(Cell(x0 + col, 1, lab))
    return out


def layout(rep: Report) -> Layout:
    colours = colours_for(rep)
    used = {lab for f in rep.files for lab in f.counts}
    legend = [(lab, colours[lab]) for lab in colours if lab in used]
    strips = []
    y = HEADER + MARGIN
    for f in rep.files:
        x0 = MARGIN + LABEL_WIDTH
        strips.append(Strip(f.path, x0, y, len(f.blocks), cells_for(f.blocks, x0)))
        y += ROW
    where = rep.mountpoint or rep.diff
    title = f"pbkfs block map of {where} ({rep.mode}); chain {' <- '.join(rep.chain) or '-'}"
    return Layout(MARGIN * 2 + LABEL_WIDTH + STRIP_WIDTH + 60, y + MARGIN, title, colours,
                  legend, strips)


def short_path(path: str, chars: int = 52) -> str:
    return path if len(path) <= chars else "..." + path[-(chars - 3):]
