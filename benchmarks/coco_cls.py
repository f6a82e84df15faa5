"""``coco_cls``: region classification on COCO instances (one question per annotation).

Metrics (×100): ``accuracy``, Osprey's ``semantic_similarity`` and ``semantic_iou`` (all-MiniLM-L6-v2), and
``mAP``/``AP50`` from pycocotools ``COCOeval`` with each GT region submitted with the predicted class and score 1
(SpatialRGPT's ``eval_coco_obo.py``, the protocol of RGPT's published 80.61). ``protocol: reference`` (default)
reads answers as that script does: accuracy = stripped answer ``==`` lower-cased name; mAP maps
``answer.split(",")[0].lower()`` to a category. ``protocol: lenient`` compares `normalize_label` forms (plurals,
articles, punctuation forgiven). The other protocol's numbers are added under ``lenient/``/``reference/`` when
they differ, so a report shows both. ``crop: square`` encodes the reference's square crop around the object
(`reference_crop_box`). Answers that name no category are left out of the mAP submission, as in
the reference, and counted in ``unmatched``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from regionvlm.data.datasets import check_region_kind
from regionvlm.errors import ConfigError
from regionvlm.evaluation.benchmark import Benchmark
from regionvlm.evaluation.coco_map import coco_region_map
from regionvlm.evaluation.labels import exact_match_accuracy, normalize_label
from regionvlm.evaluation.semantic import semantic_scores
from regionvlm.registry import BENCHMARKS

PROTOCOLS = ("reference", "lenient")


def reference_crop_box(bbox_xywh, height: int, width: int) -> list[int]:
    """SpatialRGPT's ``get_crop_box`` (``eval_region_cls.py``): a square of the image's short side centred on
    the object, the whole image when the object is larger than that. Reproduced as written, including its
    edge rule: the square moves to the far edge when its right (bottom) side passes the *short side* length,
    not the image's width (height)."""
    short = min(height, width)
    x0, y0, w, h = bbox_xywh
    x1, y1 = x0 + w, y0 + h
    if h > short or w > short:
        return [0, 0, width, height]
    cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
    left, right, top, bottom = cx - short // 2, cx + short // 2, cy - short // 2, cy + short // 2
    if left < 0:
        left, right = 0, short
    if right > short:
        left, right = width - short, width
    if top < 0:
        top, bottom = 0, short
    if bottom > short:
        top, bottom = height - short, height
    return [left, top, right, bottom]


def category_lookup(inst, protocol: str):
    """``answer → category id or None`` as each protocol maps an answer for mAP: ``reference``: the part before
    the first comma, lower-cased, against names with ``_`` → space, lower-cased (``eval_coco_obo.py``);
    ``lenient``: the same part against names, both through `normalize_label`."""
    if protocol == "reference":
        table = {c["name"].replace("_", " ").lower(): cid for cid, c in inst.cats.items()}
        return lambda text: table.get(text.split(",")[0].lower())
    table = {normalize_label(c["name"]): cid for cid, c in inst.cats.items()}
    return lambda text: table.get(normalize_label(text.split(",")[0]))


@BENCHMARKS.register("coco_cls")
class CocoClassification(Benchmark):
    """Region classification on COCO instances: accuracy, semantic similarity/IoU, mAP."""

    name = "coco_cls"
    id_key = "ann_id"
    annotation_files = "COCO instances json, e.g. instances_val2017.json"
    default_prompt: ClassVar[dict] = {"type": "region_classification", "vocabulary": "COCO-80"}

    def __init__(self, annotations, images: str | None = None, prompt: Any = None,
                 limit: int | None = None, region: str = "mask", semantic: bool = True,
                 semantic_model: str | None = None, map_iou_type: str = "bbox", include_crowd: bool = False,
                 protocol: str = "reference", crop: str | None = None):
        """``crop: square``: encode a square crop around the object, as SpatialRGPT's ``eval_region_cls.py``
        (`reference_crop_box`); null: the whole image."""
        super().__init__(annotations, images=images, prompt=prompt, limit=limit)
        if crop not in (None, "square"):
            raise ConfigError(f"coco_cls: crop: expected null or 'square', got {crop!r}")
        self.crop = crop
        if protocol not in PROTOCOLS:
            raise ConfigError(f"coco_cls: protocol: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        self.protocol = protocol
        self.region, self.semantic = check_region_kind(region), semantic
        self.semantic_model = semantic_model
        self.map_iou_type, self.include_crowd = map_iou_type, include_crowd

    def dataset_nodes(self) -> list[dict]:
        return [{"type": "coco_instances", "ann_file": self.annotation_paths[0], "region": self.region,
                 "skip_crowd": not self.include_crowd}]

    def load_annotations(self):
        return self.datasets[0].coco

    def samples(self) -> list[dict]:
        samples = super().samples()
        if self.crop is None:
            return samples
        coco = self.datasets[0].coco
        out = []
        for s in samples:
            ann = coco.anns[s["target"]["ann_id"]]
            im = coco.images[ann["image_id"]]
            out.append({**s, "crop": reference_crop_box(ann["bbox"], im["height"], im["width"])})
        return out

    def score(self, predictions: Mapping[str, dict], annotations: Any = None) -> dict[str, float]:
        inst = annotations or self.annotations
        ids = sorted(predictions, key=int)
        answers = [self.postprocess(predictions[i]["text"]) for i in ids]
        names = [inst.category_name(inst.anns[int(i)]) for i in ids]
        out: dict[str, float] = {}
        if self.semantic:
            from regionvlm.evaluation.semantic import SentenceEncoder, default_encoder

            enc = SentenceEncoder(self.semantic_model) if self.semantic_model else default_encoder()
            out.update(semantic_scores(answers, names, enc))
        by_protocol = {p: self._exact_scores(inst, ids, answers, names, p) for p in PROTOCOLS}
        out.update(by_protocol[self.protocol])
        other = next(p for p in PROTOCOLS if p != self.protocol)
        if by_protocol[other] != by_protocol[self.protocol]:
            out.update({f"{other}/{k}": v for k, v in by_protocol[other].items()})
        return out

    def _exact_scores(self, inst, ids, answers, names, protocol: str) -> dict[str, float]:
        out = {"accuracy": exact_match_accuracy(answers, names, protocol=protocol)}
        lookup = category_lookup(inst, protocol)
        predicted = {int(i): cat for i, text in zip(ids, answers) if (cat := lookup(text)) is not None}
        out.update(coco_region_map(inst, predicted, iou_type=self.map_iou_type))
        out["unmatched"] = len(ids) - len(predicted)
        return out
