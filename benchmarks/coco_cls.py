"""``coco_cls``: region classification on COCO instances (one question per annotation).

Metrics (×100): ``accuracy`` (exact match after `normalize_label`), Osprey's ``semantic_similarity`` and
``semantic_iou`` (all-MiniLM-L6-v2), and ``mAP``/``AP50`` from pycocotools ``COCOeval`` with each GT region
submitted with the predicted class and score 1 (SpatialRGPT's ``eval_coco_obo.py``). Answers that name no
category are left out of the mAP submission, as in the reference, and counted in ``unmatched``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from regionvlm.data.datasets import check_region_kind
from regionvlm.evaluation.benchmark import Benchmark
from regionvlm.evaluation.coco_map import coco_region_map
from regionvlm.evaluation.labels import exact_match_accuracy, normalize_label
from regionvlm.evaluation.semantic import semantic_scores
from regionvlm.registry import BENCHMARKS


@BENCHMARKS.register("coco_cls")
class CocoClassification(Benchmark):
    """Region classification on COCO instances: accuracy, semantic similarity/IoU, mAP."""

    name = "coco_cls"
    id_key = "ann_id"
    annotation_files = "COCO instances json, e.g. instances_val2017.json"
    default_prompt: ClassVar[dict] = {"type": "region_classification", "vocabulary": "COCO-80"}

    def __init__(self, annotations, images: str | None = None, prompt: Any = None,
                 limit: int | None = None, region: str = "mask", semantic: bool = True,
                 semantic_model: str | None = None, map_iou_type: str = "bbox", include_crowd: bool = False):
        super().__init__(annotations, images=images, prompt=prompt, limit=limit)
        self.region, self.semantic = check_region_kind(region), semantic
        self.semantic_model = semantic_model
        self.map_iou_type, self.include_crowd = map_iou_type, include_crowd

    def dataset_nodes(self) -> list[dict]:
        return [{"type": "coco_instances", "ann_file": self.annotation_paths[0], "region": self.region,
                 "skip_crowd": not self.include_crowd}]

    def load_annotations(self):
        return self.datasets[0].coco

    def score(self, predictions: Mapping[str, dict], annotations: Any = None) -> dict[str, float]:
        inst = annotations or self.annotations
        ids = sorted(predictions, key=int)
        answers = [self.postprocess(predictions[i]["text"]) for i in ids]
        names = [inst.category_name(inst.anns[int(i)]) for i in ids]
        out = {"accuracy": exact_match_accuracy(answers, names)}
        if self.semantic:
            from regionvlm.evaluation.semantic import SentenceEncoder, default_encoder

            enc = SentenceEncoder(self.semantic_model) if self.semantic_model else default_encoder()
            out.update(semantic_scores(answers, names, enc))
        name_to_cat = {normalize_label(c["name"]): cid for cid, c in inst.cats.items()}
        predicted = {}
        for i, text in zip(ids, answers):
            cat = name_to_cat.get(normalize_label(text.split(",")[0]))
            if cat is not None:
                predicted[int(i)] = cat
        out.update(coco_region_map(inst, predicted, iou_type=self.map_iou_type))
        out["unmatched"] = len(ids) - len(predicted)
        return out
