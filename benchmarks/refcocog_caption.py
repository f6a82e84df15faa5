"""``refcocog_caption``: brief region captions on RefCOCOg (umd) — the ref's sentences are the references.

Metrics (×100): BLEU-1..4, METEOR, ROUGE-L, CIDEr (and SPICE when its jars are present) with pycocoevalcap's
scorers after its PTBTokenizer, over the scored refs together (CIDEr's document frequencies come from them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from regionvlm.evaluation.benchmark import Benchmark
from regionvlm.evaluation.captions import caption_metrics
from regionvlm.registry import BENCHMARKS


class RefCocoBase(Benchmark):
    """Shared loading of ``refs(umd).p`` + ``instances.json`` for one split."""

    annotation_files = "refs(umd).p and instances.json"
    min_files = max_files = 2

    def __init__(self, annotations, images: str | None = None, prompt: Any = None,
                 limit: int | None = None, split: str = "val", region: str = "mask"):
        super().__init__(annotations, images=images, prompt=prompt, limit=limit)
        self.split, self.region = split, region

    def load_annotations(self) -> dict:
        from regionvlm.data.formats import CocoInstances, read_refs
        from regionvlm.errors import DataError

        refs_path, inst_path = self.annotation_paths
        refs = [r for r in read_refs(refs_path) if r["split"] == self.split]
        if not refs:
            raise DataError(f"{refs_path}: no refs in split {self.split!r}")
        inst = CocoInstances(inst_path)
        for r in refs:
            if r["ann_id"] not in inst.anns:
                raise DataError(f"{refs_path}: ref_id={r['ref_id']}: ann_id {r['ann_id']} not in {inst_path}")
        refs.sort(key=lambda r: r["ref_id"])
        return {"refs": refs, "by_ref": {r["ref_id"]: r for r in refs}, "instances": inst}

    def region_of(self, ann: dict) -> dict:
        region: dict[str, Any] = {"bbox": list(ann["bbox"])}
        if self.region == "mask" and ann.get("segmentation"):
            region["segmentation"] = ann["segmentation"]
        return region

    def size_of(self, image_id: int) -> tuple[int, int]:
        im = self.annotations["instances"].images[image_id]
        return im["height"], im["width"]

    def image_of(self, image_id: int) -> str:
        return self.image_path(self.annotations["instances"].images[image_id]["file_name"])


@BENCHMARKS.register("refcocog_caption")
class RefCocogCaption(RefCocoBase):
    """Region captioning on RefCOCOg: BLEU-4, METEOR, ROUGE-L, CIDEr (SPICE when available)."""

    name = "refcocog_caption"
    task = "region_caption"
    id_field = "ref_id"
    default_prompt: ClassVar[dict] = {"type": "brief_caption"}

    def __init__(self, annotations, images: str | None = None, prompt: Any = None,
                 limit: int | None = None, split: str = "val", region: str = "mask", spice: bool | str = "auto"):
        super().__init__(annotations, images=images, prompt=prompt, limit=limit, split=split, region=region)
        self.spice = spice

    def build_samples(self) -> list[dict]:
        a = self.annotations
        return [{
            "id": str(r["ref_id"]),
            "image": self.image_of(r["image_id"]),
            "image_size": self.size_of(r["image_id"]),
            "regions": [self.region_of(a["instances"].anns[r["ann_id"]])],
            "conversations": self.human_turn(region=1),
            "target": {"id": r["ref_id"], "captions": [s["sent"] for s in r["sentences"]]},
            "task": self.task,
        } for r in a["refs"]]

    def score(self, predictions: Mapping[str, dict], annotations: Any = None) -> dict[str, float]:
        by_ref = (annotations or self.annotations)["by_ref"]
        refs = {k: [s["sent"] for s in by_ref[int(k)]["sentences"]] for k in predictions}
        hyps = {k: self.postprocess(row["text"]) for k, row in predictions.items()}
        out, notes = caption_metrics(refs, hyps, spice=self.spice)
        self.notes.extend(notes)
        return out
