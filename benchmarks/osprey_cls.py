"""``lvis_cls`` and ``paco_cls``: open-vocabulary region classification as Osprey evaluates it.

Reference: Osprey ``osprey/eval/lvis_paco_eval.py`` over its eval files ``lvis_val_1k_category.json`` and
``paco_val_1k_category.json`` (read as distributed by the ``osprey_categories`` dataset; id = the LVIS/PACO
annotation id when the file's annotations carry one, else the region's position in the file). The question is
Osprey's, "What is the category of <region1>? Using only one word or phrase."; the answer keeps the text after its
first ``:`` and turns ``.``/``:``/``,`` into spaces; categories get ``_``/``:`` → spaces. Metrics (×100), averaged
over all regions: ``semantic_similarity`` (cosine of all-MiniLM-L6-v2 sentence embeddings) and ``semantic_iou``
(word-set IoU, lower case).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from regionvlm.evaluation.benchmark import Benchmark
from regionvlm.evaluation.semantic import semantic_scores
from regionvlm.registry import BENCHMARKS

OSPREY_QUESTION = "What is the category of {region}? Using only one word or phrase."


class OspreyClassification(Benchmark):
    """Osprey's semantic similarity / semantic IoU of a free-form category answer."""

    annotation_files = "Osprey eval json (lvis_val_1k_category.json / paco_val_1k_category.json)"
    default_prompt: ClassVar[dict] = {"type": "region_classification", "phrasings": [OSPREY_QUESTION],
                                      "task_guidance": False}

    def __init__(self, annotations, images: str | None = None, prompt: Any = None,
                 limit: int | None = None, semantic_model: str | None = None):
        super().__init__(annotations, images=images, prompt=prompt, limit=limit)
        self.semantic_model = semantic_model

    def dataset_nodes(self) -> list[dict]:
        return [{"type": "osprey_categories", "path": self.annotation_paths[0]}]

    def load_annotations(self) -> dict[str, str]:
        return {str(idx): cat for idx, _, cat, _ in self.datasets[0].items}

    def score(self, predictions: Mapping[str, dict], annotations: Any = None) -> dict[str, float]:
        from regionvlm.evaluation.semantic import SentenceEncoder, default_encoder

        cats = annotations or self.annotations
        ids = sorted(predictions, key=int)
        enc = SentenceEncoder(self.semantic_model) if self.semantic_model else default_encoder()
        return semantic_scores([self.postprocess(predictions[i]["text"]) for i in ids], [cats[i] for i in ids], enc)


@BENCHMARKS.register("lvis_cls")
class LvisClassification(OspreyClassification):
    """LVIS region classification, Osprey's protocol (semantic similarity, semantic IoU)."""

    name = "lvis_cls"


@BENCHMARKS.register("paco_cls")
class PacoClassification(OspreyClassification):
    """PACO part/object region classification, Osprey's protocol (semantic similarity, semantic IoU)."""

    name = "paco_cls"
