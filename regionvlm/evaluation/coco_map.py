"""COCO mAP of GT regions labelled with the predicted category (region classification).

Reference: SpatialRGPT ``eval_coco_obo.py`` (each GT box submitted with the predicted class, score 1, pycocotools
``COCOeval``). Percentages are ×100, as papers print them.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping


def coco_region_map(instances, predicted: Mapping[int, int], iou_type: str = "bbox") -> dict[str, float]:
    """mAP of "detections" made of the GT regions themselves, labelled with the predicted category.

    ``instances``: a `regionvlm.data.formats.CocoInstances`; ``predicted``: ``{ann_id: category_id}`` (answers
    that name no category are left out by the caller, as the reference does). Only the images of the scored
    annotations are evaluated. Returns ``mAP`` (AP@[.5:.95]) and ``AP50``, ×100."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not predicted:
        return {"mAP": 0.0, "AP50": 0.0}
    gt_anns = []
    for a in instances.anns.values():
        a = dict(a)
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]) if "bbox" in a else 0.0)
        if iou_type == "segm":
            a["segmentation"] = instances.ann_to_rle(a)
        gt_anns.append(a)
    dets = []
    for ann_id, cat in predicted.items():
        ann = instances.anns[ann_id]
        det = {"image_id": ann["image_id"], "category_id": cat, "score": 1.0}
        if iou_type == "segm":
            det["segmentation"] = instances.ann_to_rle(ann)
        else:
            det["bbox"] = list(ann["bbox"])
        dets.append(det)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO()
        gt.dataset = {"images": list(instances.images.values()), "annotations": gt_anns,
                      "categories": list(instances.cats.values())}
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iouType=iou_type)
        ev.params.imgIds = sorted({instances.anns[a]["image_id"] for a in predicted})
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # COCOeval reports -1 where a category has no GT; summarised stats are already means over valid ones.
    return {"mAP": 100.0 * max(float(ev.stats[0]), 0.0), "AP50": 100.0 * max(float(ev.stats[1]), 0.0)}
