"""``refcocog_rec``: referring expression comprehension on RefCOCOg (umd) by choosing a candidate region.

One question per sentence (id: ``sent_id``): the ``refcoco`` dataset with ``task: rec``. Candidates are the
image's annotations (ascending ann id; crowd regions left out, as in training), optionally capped at
``max_candidates`` (the referred one always kept), or, with ``proposals:``, a COCO detection-results file
(boxes or masks, best score first). The model answers "Region [x]" or "No corresponding options found.".
Metrics (×100): ``accuracy`` = share of answers whose chosen candidate's box has IoU ≥ ``iou_threshold`` with
the referred box, or that say no option fits when none does; ``accuracy_by_id`` = the chosen candidate is the
referred annotation (left out with proposals, which have no ids). Counts: ``unparseable`` (wrong),
``no_option_fits`` (questions where no candidate reaches the threshold), ``answered_no_option``,
``no_option_correct``. Rows carry ``candidates``: the annotation ids (or proposal boxes, xywh) in the order
shown to the model, so a file is scored against what the model actually saw.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from regionvlm.benchmarks.refcocog_caption import RefCocoBase

from regionvlm.data.geometry import box_iou_xywh
from regionvlm.errors import DataError
from regionvlm.evaluation.benchmark import require_int_list
from regionvlm.registry import BENCHMARKS
from regionvlm.text.prompts import ReferringExpressionPrompt, parse_region_index


def is_negative_answer(text: str) -> bool:
    """The task-guided "no option fits" answer ("No corresponding options found.")."""
    return ReferringExpressionPrompt.negative_answer.lower().rstrip(".") in text.lower()


@BENCHMARKS.register("refcocog_rec")
class RefCocogREC(RefCocoBase):
    """Referring expression comprehension on RefCOCOg: accuracy of the chosen candidate (IoU ≥ 0.5, and by id)."""

    name = "refcocog_rec"
    id_key = "sent_id"
    row_fields = ("candidates",)
    default_prompt: ClassVar[dict] = {"type": "rec"}

    def __init__(self, annotations, images: str | None = None, prompt: Any = None,
                 limit: int | None = None, split: str = "val", region: str = "mask",
                 max_candidates: int | None = None, iou_threshold: float = 0.5, proposals: str | None = None):
        super().__init__(annotations, images=images, prompt=prompt, limit=limit, split=split, region=region)
        self.max_candidates, self.iou_threshold, self.proposals = max_candidates, iou_threshold, proposals
        self.mode = {"task": "rec", "max_candidates": max_candidates, "proposals_file": proposals}

    def row_extras(self, sample: Mapping) -> dict:
        ids = list(sample["target"]["candidate_ann_ids"])
        if all(i is not None for i in ids):
            return {"candidates": ids}
        # proposals: the boxes shown (COCO xywh), so a file is scored against what the model saw
        return {"candidates": [[float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
                               for x0, y0, x1, y1 in sample["regions"].to_boxes()]}

    def _candidate_boxes(self, key: str, cands: Any, inst) -> list:
        if not isinstance(cands, list):
            raise DataError(f"predictions id={key}: candidates: expected a list")
        if all(isinstance(c, list) for c in cands):
            if not all(len(c) == 4 and all(isinstance(v, (int, float)) for v in c) for c in cands):
                raise DataError(f"predictions id={key}: candidates: expected [x, y, w, h] boxes")
            return [(None, c) for c in cands]
        cands = require_int_list(cands, f"predictions id={key}: candidates")
        unknown = [c for c in cands if c not in inst.anns]
        if unknown:
            raise DataError(f"predictions id={key}: candidates: annotation id {unknown[0]} is not in "
                            f"{self.annotation_paths[1]}")
        return [(c, inst.anns[c]["bbox"]) for c in cands]

    def score(self, predictions: Mapping[str, dict], annotations: Any = None) -> dict[str, float]:
        a = annotations or self.annotations
        inst = a["instances"]
        sent_to_ann = {s["sent_id"]: r["ann_id"] for r in a["refs"] for s in r["sentences"]}
        correct = correct_id = unparseable = no_fit = no_fit_said = no_fit_right = 0
        by_id = True   # annotation candidates: ids are known; proposals have none
        for key, row in predictions.items():
            cands = self._candidate_boxes(key, row["candidates"], inst)
            by_id &= all(cid is not None for cid, _ in cands)
            target_id = sent_to_ann[int(key)]
            target = inst.anns[target_id]["bbox"]
            fits = any(box_iou_xywh(box, target) >= self.iou_threshold for _, box in cands)
            no_fit += not fits
            text = self.postprocess(row["text"])
            k = parse_region_index(text, len(cands))
            if k is None:
                said_none = is_negative_answer(text)
                no_fit_said += said_none
                no_fit_right += said_none and not fits
                correct += said_none and not fits   # "no option fits" is right when none does
                correct_id += said_none and not fits
                unparseable += not said_none
                continue
            cid, box = cands[k]
            correct += bool(box_iou_xywh(box, target) >= self.iou_threshold)
            correct_id += cid == target_id
        n = len(predictions)
        pct = lambda x: 100.0 * x / n if n else 0.0
        out = {"accuracy": pct(correct), "accuracy_by_id": pct(correct_id), "unparseable": unparseable,
               "no_option_fits": no_fit, "answered_no_option": no_fit_said, "no_option_correct": no_fit_right}
        if not by_id:
            del out["accuracy_by_id"]
        return out
