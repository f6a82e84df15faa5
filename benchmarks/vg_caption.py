"""``vg_caption``: region captioning on Visual Genome region descriptions (id: ``region_id``).

``annotations``: ``region_descriptions.json`` and, optionally, a split file: a JSON list of image ids (the
GRiT/DenseCap test split), or an object whose ``split`` key holds that list. Without one, every image is used.
Each region's ``phrase`` is its single reference. Metrics as ``refcocog_caption`` (pycocoevalcap, ×100).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from regionvlm.errors import DataError
from regionvlm.evaluation.benchmark import Benchmark
from regionvlm.evaluation.captions import caption_metrics
from regionvlm.registry import BENCHMARKS


@BENCHMARKS.register("vg_caption")
class VGCaption(Benchmark):
    """Region captioning on Visual Genome: BLEU-4, METEOR, ROUGE-L, CIDEr (SPICE when available)."""

    name = "vg_caption"
    task = "region_caption"
    id_field = "region_id"
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

    def _split_ids(self) -> set[int] | None:
        if len(self.annotation_paths) < 2:
            return None
        from regionvlm.data.formats import read_json

        path = self.annotation_paths[1]
        data = read_json(path)
        if isinstance(data, dict):
            if self.split not in data:
                raise DataError(f"{path}: no key {self.split!r} (keys: {', '.join(map(str, data))})")
            data = data[self.split]
        if not isinstance(data, list) or not all(isinstance(i, int) for i in data):
            raise DataError(f"{path}: expected a JSON list of image ids")
        return set(data)

    def load_annotations(self) -> dict[int, dict]:
        from regionvlm.data.formats import read_vg_regions

        keep = self._split_ids()
        regions = {}
        for entry in read_vg_regions(self.annotation_paths[0]):
            for r in entry["regions"]:
                if keep is None or r["image_id"] in keep:
                    regions[r["region_id"]] = r
        return regions

    def build_samples(self) -> list[dict]:
        return [{
            "id": str(rid),
            "image": self.image_path(self.image_file.format(**r)),
            "regions": [{"bbox": [r["x"], r["y"], r["width"], r["height"]]}],
            "conversations": self.human_turn(region=1),
            "target": {"id": rid, "captions": [r["phrase"]]},
            "task": self.task,
        } for rid, r in sorted(self.annotations.items())]

    def score(self, predictions: Mapping[str, dict], annotations: Any = None) -> dict[str, float]:
        regions = annotations or self.annotations
        refs = {k: [regions[int(k)]["phrase"]] for k in predictions}
        hyps = {k: self.postprocess(row["text"]) for k, row in predictions.items()}
        out, notes = caption_metrics(refs, hyps, spice=self.spice)
        self.notes.extend(notes)
        return out
