"""Box geometry shared by datasets (REC proposal matching) and benchmarks (REC accuracy)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


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
