"""``vg_caption``: region captioning on Visual Genome, GLaMM's protocol by default.

``format: glamm`` (default): GRiT's preprocessed VG test set as GLaMM distributes it, ``test_caption.json``
(COCO-caption format, one region per image entry; id: the entry's ``image_id``), scored as GLaMM's
``eval/region_captioning/evaluate.py`` does. ``format: region_descriptions`` (custom splits):
``annotations``: ``region_descriptions.json`` and, optionally, a split file: a JSON list of image ids (the
GRiT/DenseCap test split), or an object whose ``split`` key holds that list. Without one, every image is used.
Samples: the ``vg_regions`` dataset (no ``image_data.json``: sizes come from the decoded images). Each region's
``phrase`` is its single reference. Metrics as ``refcocog_caption`` (pycocoevalcap, ×100).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from regionvlm.benchmarks.refcocog_caption import region_caption_score

from regionvlm.errors import ConfigError
from regionvlm.evaluation.benchmark import Benchmark
from regionvlm.registry import BENCHMARKS


@BENCHMARKS.register("vg_caption")
class VGCaption(Benchmark):
    """Region captioning on Visual Genome: BLEU-4, METEOR, ROUGE-L, CIDEr (SPICE when available)."""

    name = "vg_caption"
    id_key = "region_id"
    annotation_files = "test_caption.json (format: glamm) or region_descriptions.json [and a split file]"
    min_files, max_files = 1, 2
    default_prompt: ClassVar[dict] = {"type": "brief_caption"}

    def __init__(self, annotations, images: str | None = None, prompt: Any = None,
                 limit: int | None = None, split: str = "test", spice: bool | str = "auto",
                 image_file: str = "{image_id}.jpg", format: str = "glamm", region: str = "box"):
        """``image_file``: the image's file name pattern under ``images`` (fields of the region, e.g.
        ``{image_id}``), as the ``vg_regions`` dataset's option."""
        if format not in ("glamm", "region_descriptions"):
            raise ConfigError(f"vg_caption: format: expected 'glamm' or 'region_descriptions', got {format!r}")
        self.format, self.region = format, region
        self.id_key = "image_id" if format == "glamm" else "region_id"
        if format == "glamm":
            self.max_files = 1
        super().__init__(annotations, images=images, prompt=prompt, limit=limit)
        self.split, self.spice, self.image_file = split, spice, image_file

    def dataset_nodes(self) -> list[dict]:
        if self.format == "glamm":
            return [{"type": "region_captions", "path": self.annotation_paths[0], "region": self.region}]
        split_file = self.annotation_paths[1] if len(self.annotation_paths) > 1 else None
        return [{"type": "vg_regions", "regions_file": self.annotation_paths[0], "split_file": split_file,
                 "split": self.split, "image_file": self.image_file}]

    def load_annotations(self) -> dict[int, list[str]]:
        if self.format == "glamm":
            return {im["id"]: caps for im, _, caps in self.datasets[0].items}
        return {r["region_id"]: [r["phrase"]] for r in self.datasets[0].items}

    def score(self, predictions: Mapping[str, dict], annotations: Any = None) -> dict[str, float]:
        return region_caption_score(self, predictions, annotations or self.annotations)
