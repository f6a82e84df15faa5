"""Stage 4's input: the close-up of one region that the captioner sees, as RGPT crops it.

The region's box is grown by ``context`` × its width/height on each side (the surroundings the caption may
mention), widened to at least ``min_size`` pixels around its centre, and clipped to the image. ``highlight``
marks the region inside the close-up: its box outlined, its mask tinted, or everything else dimmed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from regionvlm.data.structures import Regions
from regionvlm.datagen.settings import CropSettings

HIGHLIGHT = (255, 64, 64)


def crop_window(box: np.ndarray, height: int, width: int, s: CropSettings) -> tuple[int, int, int, int]:
    """Integer ``(x0, y0, x1, y1)`` of the close-up of an xyxy ``box`` in a ``height`` × ``width`` image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    half_w = max(w * (0.5 + s.context), s.min_size / 2)
    half_h = max(h * (0.5 + s.context), s.min_size / 2)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = max(0, int(np.floor(cx - half_w))), max(0, int(np.floor(cy - half_h)))
    right, bottom = min(width, int(np.ceil(cx + half_w))), min(height, int(np.ceil(cy + half_h)))
    return left, top, max(right, left + 1), max(bottom, top + 1)


def close_up(image: Any, region: Regions, s: CropSettings) -> tuple[Any, Regions]:
    """``(crop, region in the crop's frame)`` for a one-region `Regions` sized like the RGB PIL ``image``."""
    from PIL import Image, ImageDraw

    window = crop_window(region.to_boxes()[0], image.height, image.width, s)
    crop, local = image.crop(window), region.crop(*window)
    if s.highlight == "box":
        crop = crop.copy()
        x0, y0, x1, y1 = (float(v) for v in local.to_boxes()[0])
        ImageDraw.Draw(crop).rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=HIGHLIGHT,
                                       width=max(1, min(crop.size) // 64))
    elif s.highlight in ("mask", "dim"):
        mask = local.to_masks()[0]
        arr = np.asarray(crop, dtype=np.float32).copy()
        if s.highlight == "mask":
            arr[mask] = 0.6 * arr[mask] + 0.4 * np.asarray(HIGHLIGHT, dtype=np.float32)
        else:
            arr[~mask] *= s.dim
        crop = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    return crop, local
