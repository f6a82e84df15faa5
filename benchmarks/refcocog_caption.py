"""``refcocog_caption``: brief region captions on RefCOCOg (umd), GLaMM's protocol by default.

Reference: GLaMM ``eval/region_captioning/evaluate.py`` (pycocoevalcap ``COCOEvalCap`` over
``finetune_refcocog_val_captions.json``): one item per sentence (the ``region_captions`` dataset), the sentence
its single reference. ``per: object`` scores one item per ref against all its sentences (the ``refcoco``
dataset with ``task: caption, per: ref``).
Metrics (×100): BLEU-1..4, METEOR, ROUGE-L, CIDEr (and SPICE when its jars are present) with pycocoevalcap's
scorers after its PTBTokenizer, over the scored refs together (CIDEr's document frequencies come from them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from regionvlm.data.datasets import check_region_kind
from regionvlm.errors import ConfigError
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


def region_caption_score(bench: Benchmark, predictions: Mapping[str, dict], refs: Mapping[Any, list[str]]):
    """pycocoevalcap scores of ``predictions`` against ``refs[int(id)]`` (SPICE notes go to ``bench.notes``)."""
    hyps = {k: bench.postprocess(row["text"]) for k, row in predictions.items()}
    out, notes = caption_metrics({k: refs[int(k)] for k in predictions}, hyps, spice=bench.spice)
    bench.notes.extend(notes)
    return out


@BENCHMARKS.register("refcocog_caption")
class RefCocogCaption(RefCocoBase):
    """Region captioning on RefCOCOg: BLEU-4, METEOR, ROUGE-L, CIDEr (SPICE when available).

    ``per: sentence`` (default, the published protocol): GLaMM's ``finetune_refcocog_val_captions.json`` read
    as distributed, one item per sentence (id: its ``image_id``) with that sentence as the single reference.
    ``per: object``: ``refs(umd).p`` + ``instances.json``, one item per referred object (id: ``ref_id``) with
    all its sentences as references (higher METEOR/CIDEr than the published protocol)."""

    name = "refcocog_caption"
    annotation_files = "finetune_refcocog_val_captions.json (per: sentence) or refs(umd).p and instances.json " \
                       "(per: object)"
    min_files, max_files = 1, 2
    mode: ClassVar[dict] = {"task": "caption", "per": "ref"}
    default_prompt: ClassVar[dict] = {"type": "brief_caption"}

    def __init__(self, annotations, images: str | None = None, prompt: Any = None,
                 limit: int | None = None, split: str = "val", region: str = "mask", spice: bool | str = "auto",
                 per: str = "sentence"):
        if per not in ("sentence", "object"):
            raise ConfigError(f"refcocog_caption: per: expected 'sentence' or 'object', got {per!r}")
        self.per = per
        self.min_files = self.max_files = 1 if per == "sentence" else 2
        self.id_key = "image_id" if per == "sentence" else "ref_id"
        super().__init__(annotations, images=images, prompt=prompt, limit=limit, split=split, region=region)
        self.spice = spice

    def dataset_nodes(self) -> list[dict]:
        if self.per == "sentence":
            return [{"type": "region_captions", "path": self.annotation_paths[0], "region": self.region}]
        return super().dataset_nodes()

    def load_annotations(self) -> dict:
        if self.per == "sentence":
            return {im["id"]: caps for im, _, caps in self.datasets[0].items}
        return {r["ref_id"]: [s["sent"] for s in r["sentences"]] for r in self.datasets[0].refs}

    def score(self, predictions: Mapping[str, dict], annotations: Any = None) -> dict[str, float]:
        return region_caption_score(self, predictions, annotations or self.annotations)
