"""Box IoU: known answers, pycocotools as the reference, and broadcasting over many boxes."""

from __future__ import annotations

import numpy as np
import pytest

from regionvlm.data.geometry import box_iou_xywh


@pytest.mark.parametrize("a,b,iou", [
    ([0, 0, 10, 10], [0, 0, 10, 10], 1.0), ([0, 0, 10, 10], [5, 0, 10, 10], 50 / 150),
    ([0, 0, 10, 10], [10, 10, 5, 5], 0.0), ([0, 0, 10, 10], [2, 2, 5, 5], 25 / 100),
    ([0, 0, 0, 0], [0, 0, 0, 0], 0.0),
])
def test_box_iou_known_answers(a, b, iou):
    got = box_iou_xywh(a, b)
    assert got.shape == () and float(got) == pytest.approx(iou)


def test_half_overlap_is_exactly_one_half():
    """REC counts IoU ≥ 0.5 as correct: an exact half must not fall below it by rounding."""
    assert box_iou_xywh([0, 0, 10, 10], [0, 0, 10, 5]) == 0.5


def test_box_iou_matches_pycocotools_on_many_boxes():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    boxes = np.concatenate([rng.uniform(0, 50, (40, 2)), rng.uniform(0.5, 30, (40, 2))], 1)
    target = np.array([10.5, 4.25, 20, 11])
    ref = mask_utils.iou(boxes.tolist(), [target.tolist()], [0])[:, 0]
    got = box_iou_xywh(boxes, target)
    assert got.shape == (40,) and (got > 0).sum() > 5
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(box_iou_xywh(target, boxes), ref, rtol=1e-9, atol=1e-12)
