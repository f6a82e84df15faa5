"""Region counting — a region task added from outside the core (see docs/adding-a-task.md).

"How many <region1>-like objects are in the image?" The answer is the number of annotated objects in the image
that share the region's category (the region itself included), written as digits ("2"). On the synthetic set a
category is a colour + shape ("red circle"); ``match: supercategory`` counts by shape only ("circle").

Three registered components, each found by its name in YAML once this module is imported (a config's
``imports: [counting]`` with this folder on ``PYTHONPATH``, or the ``regionvlm.plugins`` entry point in
``pyproject.toml`` beside this file):

- dataset ``region_counting``: a COCO-format instances json → one training sample per annotation;
- prompt ``region_counting``: the question phrasings and the "Answer the question using a number." guidance;
- benchmark ``region_counting``: the dataset's samples (``train: false``) for evaluation, answer parsing, and
  the metrics ``accuracy`` (exact count, ×100), ``mae`` (mean absolute error) and ``unparseable`` (answers with
  no number).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from regionvlm.data import formats
from regionvlm.data.datasets import RegionDataset, ann_region, check_region_kind
from regionvlm.data.structures import Regions
from regionvlm.errors import DataError
from regionvlm.evaluation.benchmark import Benchmark
from regionvlm.registry import BENCHMARKS, DATASETS, PROMPTS
from regionvlm.text.prompts import SingleRegionPrompt

MATCH_KEYS = ("category", "supercategory")


# -- shared by training and evaluation ------------------------------------------------------------------------
def _group(coco: formats.CocoInstances, ann: Mapping, match: str) -> Any:
    """What makes two annotations "alike": their category id, or their category's supercategory."""
    if match == "category":
        return ann["category_id"]
    return coco.cats[ann["category_id"]].get("supercategory", ann["category_id"])


def count_alike(coco: formats.CocoInstances, match: str = "category",
                skip_crowd: bool = True) -> dict[int, int]:
    """``{annotation id: number of annotations in its image alike to it (itself included)}``."""
    if match not in MATCH_KEYS:
        raise DataError(f"match: expected one of {', '.join(MATCH_KEYS)}, got {match!r}")
    counts: dict[int, int] = {}
    for anns in coco.anns_by_image.values():
        anns = [a for a in anns if not (skip_crowd and a.get("iscrowd", 0))]
        per_group = Counter(_group(coco, a, match) for a in anns)
        for a in anns:
            counts[a["id"]] = per_group[_group(coco, a, match)]
    return counts


# -- 1. prompt template ---------------------------------------------------------------------------------------
@PROMPTS.register("region_counting")
class RegionCountingPrompt(SingleRegionPrompt):
    """Region counting: how many objects like <region1> are in the image? Answered with a number."""

    task = "region_counting"
    phrasings = (
        "How many {region}-like objects are in the image?",
        "Count the objects in the image that are like {region}.",
        "How many objects of the same kind as {region} can you see?",
        "What is the number of objects in the image similar to {region}?",
    )
    guidance = "Answer the question using a number."


# -- 2. dataset loader ----------------------------------------------------------------------------------------
@DATASETS.register("region_counting")
class RegionCountingDataset(RegionDataset):
    """Region counting from a COCO-format instances json: one sample per annotation, answer = alike count."""

    task = "region_counting"
    default_prompt: ClassVar[dict | None] = {"type": "region_counting"}

    def __init__(self, ann_file: str, image_root: str | None = None, match: str = "category",
                 region: str = "mask", skip_crowd: bool = True, **kw: Any):
        """``match``: ``category`` or ``supercategory`` (what counts as alike). ``region``: ``mask`` (the
        segmentation) or ``box`` (the bbox only)."""
        self.region = check_region_kind(region)   # validated early, with the key's name
        self.coco = formats.CocoInstances(ann_file)
        super().__init__(image_root, **kw)
        self.counts = count_alike(self.coco, match, skip_crowd)
        self.items = self._limit([self.coco.anns[i] for i in sorted(self.counts)])

    def __getitem__(self, i: int) -> dict:
        ann = self.items[i]
        im = self.coco.images[ann["image_id"]]
        regions = Regions([ann_region(ann, self.region)], (im["height"], im["width"]),
                          out_of_bounds=self.out_of_bounds, where=f"{self.coco.path}: annotation {ann['id']}")
        answer = str(self.counts[ann["id"]])
        return {"id": f"count-{ann['id']}", "image": self.image_path(im["file_name"]), "regions": regions,
                "conversations": self.ask(i, region=1, answer=answer),
                "target": {"ann_id": ann["id"], "answer": answer}, "task": self.task}


# -- 3. post-processing ---------------------------------------------------------------------------------------
_UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
          "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
NUMBER_WORDS = {w: n for n, w in enumerate(_UNITS)}
NUMBER_WORDS.update({f"twenty{sep}{w}": 20 + n for n, w in enumerate(_UNITS[1:10], 1) for sep in "- "})
NUMBER_WORDS.update({"none": 0, "single": 1, "a pair of": 2, "a couple of": 2, "a dozen": 12})
_NUMBER = re.compile(r"(?<![\w.])(\d+)(?![\d])|\b(" + "|".join(
    sorted((re.escape(w) for w in NUMBER_WORDS), key=len, reverse=True)) + r")\b", re.IGNORECASE)


def parse_count(text: str) -> int | None:
    """The first count in an answer, as digits ("2", "2 objects", "There are 3.") or words ("two", "Three.",
    "none", "a single one", "a dozen"); None when it has none ("many", "", "No.")."""
    for m in _NUMBER.finditer(text or ""):
        if m.group(1) is not None:
            return int(m.group(1))
        return NUMBER_WORDS[m.group(2).lower()]
    return None


# -- 4. metric ------------------------------------------------------------------------------------------------
def count_metrics(predicted: Sequence[int | None], reference: Sequence[int]) -> dict[str, float]:
    """``accuracy`` (% exact counts), ``mae`` (mean |predicted − reference|) and ``unparseable`` (answers with
    no count). An unparseable answer is wrong for accuracy and counts as predicting 0 for MAE, so every sample
    weighs in both numbers."""
    if len(predicted) != len(reference):
        raise ValueError(f"{len(predicted)} predictions for {len(reference)} references")
    if not reference:
        return {"accuracy": 0.0, "mae": 0.0, "unparseable": 0}
    correct = sum(p is not None and p == r for p, r in zip(predicted, reference))
    errors = [abs((0 if p is None else p) - r) for p, r in zip(predicted, reference)]
    return {"accuracy": 100.0 * correct / len(reference), "mae": sum(errors) / len(errors),
            "unparseable": sum(p is None for p in predicted)}


# -- 5. benchmark ---------------------------------------------------------------------------------------------
@BENCHMARKS.register("region_counting")
class RegionCounting(Benchmark):
    """Region counting: exact-count accuracy, mean absolute error, unparseable answers."""

    name = "region_counting"
    id_key = "ann_id"                 # the sample target's field that holds the official id
    annotation_files = "a COCO-format instances json, e.g. synth/annotations/instances_val.json"
    # a PROMPTS node: the training prompt, asked in its evaluation phrasing (the first one, no rng)
    default_prompt: ClassVar[dict] = {"type": "region_counting"}

    def __init__(self, annotations, images: str | None = None, prompt: Any = None,
                 limit: int | None = None, match: str = "category", region: str = "mask",
                 skip_crowd: bool = True):
        super().__init__(annotations, images=images, prompt=prompt, limit=limit)
        if match not in MATCH_KEYS:
            raise DataError(f"region_counting: match: expected one of {', '.join(MATCH_KEYS)}, got {match!r}")
        self.match, self.region, self.skip_crowd = match, check_region_kind(region), skip_crowd

    def dataset_nodes(self) -> list[dict]:
        """The training dataset, on the benchmark's file (built with ``train: false``, image root and prompt)."""
        return [{"type": "region_counting", "ann_file": self.annotation_paths[0], "match": self.match,
                 "region": self.region, "skip_crowd": self.skip_crowd}]

    def load_annotations(self) -> dict[int, int]:
        return self.datasets[0].counts

    def postprocess(self, text: str) -> str:
        """The parsed count as a string ("" when the answer has none)."""
        n = parse_count(text)
        return "" if n is None else str(n)

    def score(self, predictions: Mapping[str, dict], annotations: Any = None) -> dict[str, float]:
        counts = annotations or self.annotations
        ids = sorted(predictions, key=int)
        parsed = [self.postprocess(predictions[i]["text"]) for i in ids]
        return count_metrics([int(p) if p else None for p in parsed], [counts[int(i)] for i in ids])
