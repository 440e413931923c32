"""SVG rendering by hand (no dependency): rectangles and text from the shared layout."""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from tools.blockmap.picture import CELL_H, MARGIN, layout, short_path
from tools.blockmap.report import Report


def render_svg(rep: Report) -> bytes:
    lay = layout(rep)
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{lay.width}" height="{lay.height}" '
        f'viewBox="0 0 {lay.width} {lay.height}" font-family="monospace" font-size="11">',
        f'<rect x="0" y="0" width="{lay.width}" height="{lay.height}" fill="#ffffff"/>',
        f'<text x="{MARGIN}" y="{MARGIN + 8}">{escape(lay.title)}</text>',
    ]
    x = MARGIN
    for lab, colour in lay.legend:
        out.append(f'<rect x="{x}" y="{MARGIN + 16}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{x + 14}" y="{MARGIN + 25}">{escape(lab)}</text>')
        x += 24 + 7 * len(lab)
    for s in lay.strips:
        out.append(f'<g><title>{escape(s.path)} ({s.blocks} blocks)</title>')
        out.append(f'<text x="{MARGIN}" y="{s.y + CELL_H - 1}">{escape(short_path(s.path))}'
                   '</text>')
        for c in s.cells:
            out.append(f'<rect x="{c.x}" y="{s.y}" width="{c.w}" height="{CELL_H}" '
                       f'fill={quoteattr(lay.colours[c.label])}><title>{escape(c.label)}'
                       '</title></rect>')
        end = max((c.x + c.w for c in s.cells), default=s.x0)
        out.append(f'<text x="{end + 4}" y="{s.y + CELL_H - 1}">{s.blocks}</text>')
        out.append("</g>")
    out.append("</svg>")
    return ("\n".join(out) + "\n").encode()
