"""PNG rendering with Pillow, from the same layout as the SVG."""

from __future__ import annotations

import io

from tools.blockmap.picture import CELL_H, MARGIN, layout, short_path
from tools.blockmap.report import Report


def render_png(rep: Report) -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    lay = layout(rep)
    img = Image.new("RGB", (lay.width, lay.height), "#ffffff")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.text((MARGIN, MARGIN - 2), lay.title, fill="#000000", font=font)
    x = MARGIN
    for lab, colour in lay.legend:
        draw.rectangle((x, MARGIN + 16, x + 9, MARGIN + 25), fill=colour)
        draw.text((x + 14, MARGIN + 15), lab, fill="#000000", font=font)
        x += 24 + 7 * len(lab)
    for s in lay.strips:
        draw.text((MARGIN, s.y - 1), short_path(s.path), fill="#000000", font=font)
        for c in s.cells:
            draw.rectangle((c.x, s.y, c.x + c.w - 1, s.y + CELL_H - 1),
                           fill=lay.colours[c.label])
        end = max((c.x + c.w for c in s.cells), default=s.x0)
        draw.text((end + 4, s.y - 1), str(s.blocks), fill="#000000", font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
