"""Region geometry as plain functions: COCO segmentation ↔ RLE ↔ mask conversions (pycocotools is the
reference), a nearest-neighbour mask resize, and box IoU. `Regions` (structures.py) builds on them; datasets
(REC proposal matching) and benchmarks (REC accuracy) share the one box IoU."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from regionvlm.errors import DataError


# -- conversions (pycocotools is the reference) ---------------------------------------------------------------
def segmentation_to_rle(seg: Any, h: int, w: int, where: str = "segmentation") -> dict:
    """A COCO ``segmentation`` (polygon list, uncompressed RLE, compressed RLE) → compressed RLE of size h×w,
    as pycocotools' ``annToRLE``. Raises `DataError` naming ``where`` on malformed or mismatched input."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        polys = check_polygons(seg, where)
        return mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    if isinstance(seg, dict):
        if "size" not in seg or "counts" not in seg:
            raise DataError(f"{where}: RLE needs 'size' and 'counts'")
        size, counts = seg["size"], seg["counts"]
        if not (isinstance(size, (list, tuple)) and len(size) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in size)):
            raise DataError(f"{where}.size: expected [height, width], got {size!r}")
        if not (isinstance(counts, (str, bytes)) or (isinstance(counts, list) and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts))):
            raise DataError(f"{where}.counts: expected a compressed string or a list of run lengths ≥ 0")
        if [int(v) for v in size] != [h, w]:
            raise DataError(f"{where}.size: RLE size {list(seg['size'])} does not match the image size [{h}, {w}]")
        if isinstance(seg["counts"], list):  # uncompressed: run lengths, column-major
            if sum(seg["counts"]) != h * w:
                raise DataError(f"{where}.counts: run lengths sum to {sum(seg['counts'])}, expected {h}×{w}={h * w}")
            return mask_utils.frPyObjects(seg, h, w)
        counts = seg["counts"]
        return {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    raise DataError(f"{where}: expected polygons (list) or RLE (dict), got {type(seg).__name__}")


def check_polygons(seg: Any, where: str) -> list[list[float]]:
    """Validate a COCO polygon list: each polygon flat [x1, y1, ...] with an even number ≥ 6 of finite values."""
    if not isinstance(seg, list) or not seg:
        raise DataError(f"{where}: expected a non-empty list of polygons")
    out = []
    for k, poly in enumerate(seg):
        if not isinstance(poly, (list, tuple, np.ndarray)):
            raise DataError(f"{where}[{k}]: expected a flat list of coordinates")
        arr = np.asarray(poly, dtype=np.float64).ravel()
        if arr.size % 2:
            raise DataError(f"{where}[{k}]: odd number of coordinates ({arr.size})")
        if arr.size < 6:
            raise DataError(f"{where}[{k}]: polygon has {arr.size // 2} points, needs at least 3")
        if not np.isfinite(arr).all():
            raise DataError(f"{where}[{k}]: non-finite coordinate")
        out.append(arr.tolist())
    return out


def rle_to_mask(rle: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode(rle).astype(bool)


def mask_to_rle(mask: np.ndarray) -> dict:
    """H×W bool → compressed RLE (counts as str, JSON-ready)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def resize_mask_nearest(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resize by pixel centres (as PIL's NEAREST): one fancy-index, no loop."""
    H, W = mask.shape
    rows = np.minimum(((np.arange(h) + 0.5) * H / h).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * W / w).astype(np.int64), W - 1)
    return mask[rows[:, None], cols[None, :]]


# -- boxes ----------------------------------------------------------------------------------------------------
def box_iou_xywh(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """IoU of COCO ``[x, y, w, h]`` boxes, broadcast over leading dimensions (``N×4`` against ``4`` gives ``N``;
    two single boxes give a 0-d array). Continuous coordinates, as ``pycocotools.mask.iou``; an empty union
    gives 0. No epsilon in the division, so an IoU of exactly 0.5 passes a ``>= 0.5`` threshold."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    lo = np.maximum(a[..., :2], b[..., :2])
    hi = np.minimum(a[..., :2] + a[..., 2:], b[..., :2] + b[..., 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    union = a[..., 2:].prod(-1) + b[..., 2:].prod(-1) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
