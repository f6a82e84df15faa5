"""Pictures of regions and answers: each region drawn (translucent mask or box outline) in a distinct colour
with its index, and the text (answer, reference) in a panel beside the image."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128), (170, 110, 40), (128, 0, 0)]
PANEL_WIDTH = 320


def _font(size: int = 14):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_regions(image: Any, regions: Any, alpha: float = 0.45):
    """The image (path, PIL or array) with every region drawn; returns a new RGB PIL image of the same size."""
    from PIL import Image, ImageDraw

    from regionvlm.data.processing import load_image
    from regionvlm.data.region_input import parse_regions

    img = load_image(image).convert("RGB")
    regions = parse_regions(regions).with_image_size(img.height, img.width)
    arr = np.asarray(img, dtype=np.float32).copy()
    masks = regions.to_masks()
    boxes = regions.to_boxes()
    for k, (kind, _) in enumerate(regions.items):
        colour = np.asarray(PALETTE[k % len(PALETTE)], dtype=np.float32)
        if kind != "box":  # masks, polygons and RLE: fill; boxes: outline only
            arr[masks[k]] = (1 - alpha) * arr[masks[k]] + alpha * colour
    out = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    font = _font(max(10, min(img.width, img.height) // 25))
    for k, box in enumerate(boxes):
        colour = PALETTE[k % len(PALETTE)]
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour, width=max(1, img.width // 200))
        label = str(k + 1)
        tx, ty = x0 + 2, max(0.0, y0 - font.size - 2) if hasattr(font, "size") else y0
        tb = draw.textbbox((tx, ty), label, font=font)
        draw.rectangle(tb, fill=colour)
        draw.text((tx, ty), label, fill=(255, 255, 255), font=font)
    return out


def with_text_panel(picture, lines: Sequence[str], width: int = PANEL_WIDTH):
    """``picture`` with a white panel on its right holding ``lines`` (wrapped)."""
    from PIL import Image, ImageDraw

    font = _font(13)
    wrapped = [w for line in lines for w in (textwrap.wrap(line, width=max(10, width // 8)) or [""])]
    height = max(picture.height, 16 * len(wrapped) + 16)
    canvas = Image.new("RGB", (picture.width + width, height), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(wrapped):
        draw.text((picture.width + 8, 8 + 16 * i), line, fill=(0, 0, 0), font=font)
    return canvas


def overlay_text(picture, lines: Sequence[str]):
    """``picture`` (same size) with ``lines`` in a translucent dark box along its bottom edge."""
    from PIL import Image, ImageDraw

    font = _font(max(10, min(picture.width, picture.height) // 28))
    step = getattr(font, "size", 11) + 4
    chars = max(10, int(picture.width / (0.55 * step)))
    wrapped = [w for line in lines for w in (textwrap.wrap(line, width=chars) or [""])]
    wrapped = wrapped[-max(1, picture.height // (2 * step)):]  # never cover more than half the picture
    box_h = step * len(wrapped) + 6
    base = picture.convert("RGBA")
    shade = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(shade)
    draw.rectangle([0, base.height - box_h, base.width, base.height], fill=(0, 0, 0, 150))
    for i, line in enumerate(wrapped):
        draw.text((4, base.height - box_h + 3 + step * i), line, fill=(255, 255, 255, 255), font=font)
    return Image.alpha_composite(base, shade).convert("RGB")


def grid(pictures: Sequence[Any], columns: int = 2):
    """Pictures tiled row by row on a white sheet."""
    from PIL import Image

    if not pictures:
        raise ValueError("grid: no pictures")
    cw, ch = max(p.width for p in pictures), max(p.height for p in pictures)
    rows = (len(pictures) + columns - 1) // columns
    sheet = Image.new("RGB", (cw * min(columns, len(pictures)), ch * rows), (255, 255, 255))
    for i, p in enumerate(pictures):
        sheet.paste(p, ((i % columns) * cw, (i // columns) * ch))
    return sheet


def save_png(picture, path) -> None:
    """Write a PNG atomically (temp name, then rename)."""
    import io

    from regionvlm.data.formats import write_bytes

    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    write_bytes(path, buf.getvalue())
