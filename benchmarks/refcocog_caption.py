"""``refcocog_caption``: brief region captions on RefCOCOg (umd) — the ref's sentences are the references.

Samples: the ``refcoco`` dataset with ``task: caption, per: ref`` (one sample per ref, id ``ref_id``).
Metrics (×100): BLEU-1..4, METEOR, ROUGE-L, CIDEr (and SPICE when its jars are present) with pycocoevalcap's
scorers after its PTBTokenizer, over the scored refs together (CIDEr's document frequencies come from them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from regionvlm.data.datasets import check_region_kind
from regionvlm.evaluation.benchmark import Benchmark
from regionvlm.evaluation.captions import caption_metrics
from regionvlm.registry import BENCHMARKS


class RefCocoBase(Benchmark):
    """RefCOCO* benchmarks: ``refs(umd).p`` + ``instances.json`` read by the ``refcoco`` dataset, one split."""

    annotation_files = "refs(umd).p and instances.json"
    min_files = max_files = 2
    mode: ClassVar[dict] = {}   # the refcoco dataset's task options

    def __init__(self, annotations, images: str | None = None, prompt: Any = None,
                 limit: int | None = None, split: str = "val", region: str = "mask"):
        super().__init__(annotations, images=images, prompt=prompt, limit=limit)
        self.split, self.region = split, check_region_kind(region)

    def dataset_nodes(self) -> list[dict]:
        refs, instances = self.annotation_paths
        return [{"type": "refcoco", "refs_file": refs, "instances_file": instances, "split": self.split,
                 "region": self.region, **self.mode}]

    def load_annotations(self) -> dict:
        ds = self.datasets[0]
        return {"refs": ds.refs, "by_ref": {r["ref_id"]: r for r in ds.refs}, "instances": ds.coco}


@BENCHMARKS.register("refcocog_caption")
class RefCocogCaption(RefCocoBase):
    """Region captioning on RefCOCOg: BLEU-4, METEOR, ROUGE-L, CIDEr (SPICE when available)."""

    name = "refcocog_caption"
    id_key = "ref_id"
    mode: ClassVar[dict] = {"task": "caption", "per": "ref"}
    default_prompt: ClassVar[dict] = {"type": "brief_caption"}

    def __init__(self, annotations, images: str | None = None, prompt: Any = None,
                 limit: int | None = None, split: str = "val", region: str = "mask", spice: bool | str = "auto"):
        super().__init__(annotations, images=images, prompt=prompt, limit=limit, split=split, region=region)
        self.spice = spice

    def score(self, predictions: Mapping[str, dict], annotations: Any = None) -> dict[str, float]:
        by_ref = (annotations or self.annotations)["by_ref"]
        refs = {k: [s["sent"] for s in by_ref[int(k)]["sentences"]] for k in predictions}
        hyps = {k: self.postprocess(row["text"]) for k, row in predictions.items()}
        out, notes = caption_metrics(refs, hyps, spice=self.spice)
        self.notes.extend(notes)
        return out
