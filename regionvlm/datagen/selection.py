"""Stage 2, region selection: area bounds, crowd flag, class list, at most N regions per image.

Deterministic for a seed and independent of sharding: the draw of an image's regions uses an rng seeded by
(seed, CRC32 of the image path), so any job, shard or rank selects exactly the same regions.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import replace

import numpy as np

from regionvlm.datagen.settings import SelectionSettings
from regionvlm.datagen.sources import SourceImage, SourceRegion


def _drop_reason(region: SourceRegion, s: SelectionSettings, classes: set[str] | None,
                 excluded: set[str]) -> str | None:
    if s.skip_crowd and region.crowd:
        return "crowd"
    if region.area < s.min_area or (s.max_area is not None and region.area > s.max_area):
        return "area"
    name = (region.class_name or "").lower()
    if (classes is not None and name not in classes) or name in excluded:
        return "class"
    return None


def select_regions(images: list[SourceImage], s: SelectionSettings, seed: int) -> tuple[list[SourceImage], Counter]:
    """The images that keep at least one region (each with its selected regions, in annotation order) and the
    number of regions dropped per reason (``crowd``, ``area``, ``class``, ``max_per_image``)."""
    classes = {c.lower() for c in s.classes} if s.classes is not None else None
    excluded = {c.lower() for c in s.exclude_classes}
    drops: Counter = Counter()
    out = []
    for im in images:
        kept = []
        for region in im.regions:
            reason = _drop_reason(region, s, classes, excluded)
            if reason:
                drops[reason] += 1
            else:
                kept.append(region)
        if s.max_per_image is not None and len(kept) > s.max_per_image:
            rng = np.random.default_rng([seed, zlib.crc32(im.key.encode("utf-8"))])
            chosen = sorted(rng.choice(len(kept), size=s.max_per_image, replace=False).tolist())
            drops["max_per_image"] += len(kept) - len(chosen)
            kept = [kept[k] for k in chosen]
        if kept:
            out.append(replace(im, regions=kept))
    return out, drops
