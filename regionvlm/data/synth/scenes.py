"""One synthetic scene: the object vocabulary, a random layout (full and visible masks), its pixels, and the
relation words between two objects. Deterministic for a given ``numpy`` generator."""

from __future__ import annotations

import itertools

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {"red": (220, 45, 45), "green": (40, 165, 60), "blue": (45, 85, 220), "yellow": (235, 205, 40),
           "purple": (150, 60, 190)}
PATTERNS = ("solid", "striped", "dotted")
SIZES = {"small": (5, 7), "medium": (9, 17), "large": (19, 30)}  # half-size (radius) range in px at 128 px
SIZE_P = (0.25, 0.45, 0.30)
RELATIONS = ("left of", "right of", "above", "below")
CATEGORIES = [{"id": i + 1, "name": f"{c} {s}", "supercategory": s}
              for i, (s, c) in enumerate(itertools.product(SHAPES, COLOURS))]
CAT_ID = {c["name"]: c["id"] for c in CATEGORIES}


def shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[float]:
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        pts = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
    elif shape == "square":
        pts = np.array([[cx - r, cy - r], [cx + r, cy - r], [cx + r, cy + r], [cx - r, cy + r]])
    elif shape == "triangle":
        pts = np.array([[cx, cy - r], [cx + r, cy + r], [cx - r, cy + r]])
    else:  # diamond
        pts = np.array([[cx, cy - r], [cx + r, cy], [cx, cy + r], [cx - r, cy]])
    return np.round(pts, 2).ravel().tolist()


def layout_scene(rng: np.random.Generator, size: int) -> list[dict]:
    """Objects (bottom to top) with full and visible masks; every object keeps ≥ 50 % of itself visible."""
    from pycocotools import mask as mask_utils

    n_target = int(rng.integers(2, 7))
    objects: list[dict] = []
    used = set()
    for _ in range(n_target * 8):
        if len(objects) == n_target:
            break
        shape, colour, pattern = SHAPES[rng.integers(4)], list(COLOURS)[rng.integers(len(COLOURS))], \
            PATTERNS[rng.integers(3)]
        if (shape, colour, pattern) in used:  # keeps referring expressions unique within an image
            continue
        size_name = list(SIZES)[rng.choice(3, p=SIZE_P)]
        r = float(rng.uniform(*SIZES[size_name]))
        big = [o for o in objects if o["r"] > r * 2.2]
        if big and rng.random() < 0.35:  # nest inside a bigger object
            host = big[rng.integers(len(big))]
            cx, cy = host["cx"] + rng.uniform(-0.3, 0.3) * host["r"], host["cy"] + rng.uniform(-0.3, 0.3) * host["r"]
        else:
            cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
        poly = shape_polygon(shape, cx, cy, r)
        full = mask_utils.decode(mask_utils.frPyObjects([poly], size, size)[0]).astype(bool)
        if full.sum() < 12:
            continue
        if any((o["visible"] & ~full).sum() < 0.5 * o["full"].sum() for o in objects):
            continue
        for o in objects:
            o["visible"] = o["visible"] & ~full
        used.add((shape, colour, pattern))
        objects.append({"shape": shape, "colour": colour, "pattern": pattern, "size": size_name, "r": r,
                        "cx": float(cx), "cy": float(cy), "poly": poly, "full": full, "visible": full.copy()})
    return objects


def render_scene(rng: np.random.Generator, objects: list[dict], size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    base = rng.uniform(150, 205)
    grad = rng.uniform(-15, 15) * (yy / size - 0.5) + rng.uniform(-15, 15) * (xx / size - 0.5)
    img = np.repeat((base + grad)[:, :, None], 3, axis=2)
    stripes = ((xx + yy) // 3) % 2 == 1
    dots = (xx % 4 < 2) & (yy % 4 < 2)
    for o in objects:
        colour = np.clip(np.array(COLOURS[o["colour"]]) + rng.uniform(-12, 12, 3), 0, 255)
        img[o["full"]] = colour
        shade = {"solid": None, "striped": stripes, "dotted": dots}[o["pattern"]]
        if shade is not None:
            img[o["full"] & shade] = colour * 0.45
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def relation(a: dict, b: dict) -> str | None:
    """Where a is relative to b, by the dominant axis of the centre offset; None if too close to call."""
    dx, dy = a["cx"] - b["cx"], a["cy"] - b["cy"]
    if max(abs(dx), abs(dy)) < 12 or abs(abs(dx) - abs(dy)) < 6:
        return None
    if abs(dx) > abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def phrase(o: dict) -> str:
    return f"{o['pattern']} {o['colour']} {o['shape']}"
