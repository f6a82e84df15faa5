"""``vg_caption``: region captioning on Visual Genome region descriptions (id: ``region_id``).

``annotations``: ``region_descriptions.json`` and, optionally, a split file: a JSON list of image ids (the
GRiT/DenseCap test split), or an object whose ``split`` key holds that list. Without one, every image is used.
Samples: the ``vg_regions`` dataset (no ``image_data.json``: sizes come from the decoded images). Each region's
``phrase`` is its single reference. Metrics as ``refcocog_caption`` (pycocoevalcap, ×100).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from regionvlm.evaluation.benchmark import Benchmark
from regionvlm.evaluation.captions import caption_metrics
from regionvlm.registry import BENCHMARKS


@BENCHMARKS.register("vg_caption")
class VGCaption(Benchmark):
    """Region captioning on Visual Genome: BLEU-4, METEOR, ROUGE-L, CIDEr (SPICE when available)."""

    name = "vg_caption"
    id_key = "region_id"
    annotation_files = "region_descriptions.json [and a split file of image ids]"
    min_files, max_files = 1, 2
    default_prompt: ClassVar[dict] = {"type": "brief_caption"}

    def __init__(self, annotations, images: str | None = None, prompt: Any = None,
                 limit: int | None = None, split: str = "test", spice: bool | str = "auto",
                 image_file: str = "{image_id}.jpg"):
        """``image_file``: the image's file name pattern under ``images`` (fields of the region, e.g.
        ``{image_id}``), as the ``vg_regions`` dataset's option."""
        super().__init__(annotations, images=images, prompt=prompt, limit=limit)
        self.split, self.spice, self.image_file = split, spice, image_file

    def dataset_nodes(self) -> list[dict]:
        split_file = self.annotation_paths[1] if len(self.annotation_paths) > 1 else None
        return [{"type": "vg_regions", "regions_file": self.annotation_paths[0], "split_file": split_file,
                 "split": self.split, "image_file": self.image_file}]

    def load_annotations(self) -> dict[int, dict]:
        return {r["region_id"]: r for r in self.datasets[0].items}

    def score(self, predictions: Mapping[str, dict], annotations: Any = None) -> dict[str, float]:
        regions = annotations or self.annotations
        refs = {k: [regions[int(k)]["phrase"]] for k in predictions}
        hyps = {k: self.postprocess(row["text"]) for k, row in predictions.items()}
        out, notes = caption_metrics(refs, hyps, spice=self.spice)
        self.notes.extend(notes)
        return out
