"""``refcocog_rec``: referring expression comprehension on RefCOCOg (umd) by choosing a candidate region.

One question per sentence (id: ``sent_id``): the ``refcoco`` dataset with ``task: rec``. Candidates are the
image's annotations (ascending ann id; crowd regions left out, as in training), optionally capped at
``max_candidates`` (the referred one always kept). The model answers
"Region [x]"; accuracy (×100) = share of answers whose chosen candidate's box has IoU ≥ 0.5 with the referred
box. Unparseable answers are wrong and counted (``unparseable``). Rows carry ``candidates``: the annotation ids in
the order shown to the model, so a file is scored against what the model actually saw.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from regionvlm.benchmarks.refcocog_caption import RefCocoBase

from regionvlm.data.geometry import box_iou_xywh
from regionvlm.errors import DataError
from regionvlm.evaluation.answers import parse_region_index
from regionvlm.evaluation.benchmark import require_int_list
from regionvlm.registry import BENCHMARKS


@BENCHMARKS.register("refcocog_rec")
class RefCocogREC(RefCocoBase):
    """Referring expression comprehension on RefCOCOg: accuracy of the chosen candidate (IoU ≥ 0.5)."""

    name = "refcocog_rec"
    id_key = "sent_id"
    row_fields = ("candidates",)
    default_prompt: ClassVar[dict] = {"type": "rec"}

    def __init__(self, annotations, images: str | None = None, prompt: Any = None,
                 limit: int | None = None, split: str = "val", region: str = "mask",
                 max_candidates: int | None = None, iou_threshold: float = 0.5):
        super().__init__(annotations, images=images, prompt=prompt, limit=limit, split=split, region=region)
        self.max_candidates, self.iou_threshold = max_candidates, iou_threshold
        self.mode = {"task": "rec", "max_candidates": max_candidates}

    def row_extras(self, sample: Mapping) -> dict:
        return {"candidates": list(sample["target"]["candidate_ann_ids"])}

    def score(self, predictions: Mapping[str, dict], annotations: Any = None) -> dict[str, float]:
        a = annotations or self.annotations
        inst = a["instances"]
        sent_to_ann = {s["sent_id"]: r["ann_id"] for r in a["refs"] for s in r["sentences"]}
        correct = unparseable = 0
        for key, row in predictions.items():
            cands = require_int_list(row["candidates"], f"predictions id={key}: candidates")
            unknown = [c for c in cands if c not in inst.anns]
            if unknown:
                raise DataError(f"predictions id={key}: candidates: annotation id {unknown[0]} is not in "
                                f"{self.annotation_paths[1]}")
            k = parse_region_index(self.postprocess(row["text"]), len(cands))
            if k is None:
                unparseable += 1
                continue
            target = inst.anns[sent_to_ann[int(key)]]["bbox"]
            correct += bool(box_iou_xywh(inst.anns[cands[k]]["bbox"], target) >= self.iou_threshold)
        n = len(predictions)
        return {"accuracy": 100.0 * correct / n if n else 0.0, "unparseable": unparseable}
