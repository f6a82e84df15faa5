"""``scope``: scope adherence, RGPT's claim (c): task-guided prompts keep each answer in its task's form.

Every region of a COCO-format instances file is asked two questions, each by a ``coco_instances`` dataset with
``train: false``: a **classification** question (``prompt``, default ``region_classification`` listing the file's
own category names) and an **open** question (``open_prompt``, default ``brief_caption``, the caption prompt
training uses). Both are `PROMPTS` nodes, so ``task_guidance: false`` on either drops its guidance suffix (the
ablation). Metrics (×100, `regionvlm.evaluation.scope`): ``label_rate``, ``accuracy``, ``sentence_rate``,
``grounded_rate``, ``scope_adherence``. Rows carry ``id`` = annotation id and ``question`` (``classification`` or
``open``); ``limit: N`` = the first N regions, so 2N rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any, ClassVar

from regionvlm.data.datasets import check_region_kind
from regionvlm.errors import ConfigError
from regionvlm.evaluation.benchmark import Benchmark
from regionvlm.evaluation.scope import GROUNDED_MODES, scope_metrics
from regionvlm.registry import BENCHMARKS

QUESTIONS = ("classification", "open")


@BENCHMARKS.register("scope")
class ScopeAdherence(Benchmark):
    """Scope adherence: labels for classification, sentences for open questions, on the same regions."""

    name = "scope"
    id_key = "ann_id"
    row_fields = ("question",)
    annotation_files = "a COCO-format instances json, e.g. synth/annotations/instances_val.json"
    default_prompt: ClassVar[dict] = {"type": "region_classification", "vocabulary": "categories"}
    default_open_prompt: ClassVar[dict] = {"type": "brief_caption"}

    def __init__(self, annotations, images: str | None = None, prompt: Any = None, open_prompt: Any = None,
                 limit: int | None = None, region: str = "mask", include_crowd: bool = False, min_words: int = 4,
                 attribute_separator: str | None = None, grounded: str = "any", max_new_tokens: int | None = None):
        """``min_words``: the fewest words an open answer needs to count as a sentence; ``attribute_separator``:
        what splits a category name into the words ``grounded_rate`` looks for (null: whitespace); ``grounded``:
        ``any`` of those words mentioned, or ``all``; ``max_new_tokens``: a generation budget for both
        questions (null: the model's)."""
        super().__init__(annotations, images=images, prompt=prompt, limit=limit)
        if isinstance(min_words, bool) or not isinstance(min_words, int) or min_words < 1:
            raise ConfigError(f"scope: min_words: expected a positive integer, got {min_words!r}")
        if grounded not in GROUNDED_MODES:
            raise ConfigError(f"scope: grounded: expected one of {', '.join(GROUNDED_MODES)}, got {grounded!r}")
        if attribute_separator == "":
            raise ConfigError("scope: attribute_separator: expected null (whitespace) or a non-empty string")
        self.open_prompt_config = open_prompt or self.default_open_prompt
        self.region, self.include_crowd = check_region_kind(region), include_crowd
        self.min_words, self.attribute_separator, self.grounded = min_words, attribute_separator, grounded
        if max_new_tokens is not None:
            self.generation = {"max_new_tokens": max_new_tokens}

    @property
    def prompt_node(self) -> None:
        """None: each dataset node carries its own prompt (`dataset_nodes`), not one prompt for all."""
        return None

    @staticmethod
    def _prompt(config: Any, default: dict) -> dict:
        # a literal question: one phrasing of the default type, no guidance (as `Benchmark.prompt_node`)
        if isinstance(config, str):
            return {"type": default["type"], "phrasings": [config], "task_guidance": False}
        return dict(config)

    def dataset_nodes(self) -> list[dict]:
        common = {"type": "coco_instances", "ann_file": self.annotation_paths[0], "region": self.region,
                  "skip_crowd": not self.include_crowd, "max_samples": self.limit}
        return [{**common, "prompt": self._prompt(self.prompt_config, self.default_prompt)},
                {**common, "prompt": self._prompt(self.open_prompt_config, self.default_open_prompt)}]

    def load_annotations(self) -> dict:
        coco = self.datasets[0].coco
        return {"names": {aid: coco.category_name(ann) for aid, ann in coco.anns.items()},
                "vocabulary": coco.category_names}

    @cached_property
    def _samples(self) -> list[dict]:
        """Region by region, its classification sample then its open one: the datasets' samples with unique
        ids (both datasets name a sample after its annotation) and the question kind in ``target``."""
        out = []
        with self._named():
            for i in range(len(self.datasets[0])):
                for question, ds in zip(QUESTIONS, self.datasets, strict=True):
                    s = ds[i]
                    s = {**s, "id": f"scope-{question}-{s['target']['ann_id']}", "task": ds.prompt.task,
                         "target": {**s["target"], "question": question}}
                    if question == "open":   # the label is no reference answer for an open question
                        s["target"].pop("answer")
                        s["conversations"] = s["conversations"][:1]
                    out.append(s)
        return out

    def row_extras(self, sample: Mapping) -> dict:
        return {"question": sample["target"]["question"]}

    def row_key(self, row: Mapping) -> str:
        return f"{row['question']}/{row['id']}"

    def score(self, predictions: Mapping[str, dict], annotations: Any = None) -> dict[str, float]:
        truth = annotations or self.annotations
        by_question: dict[str, list[tuple[str, str]]] = {q: [] for q in QUESTIONS}
        for key, row in predictions.items():
            question, ann_id = key.split("/", 1)
            by_question[question].append((self.postprocess(row["text"]), truth["names"][int(ann_id)]))
        cls, open_ = by_question["classification"], by_question["open"]
        return scope_metrics([a for a, _ in cls], [n for _, n in cls], [a for a, _ in open_],
                             [n for _, n in open_], truth["vocabulary"], min_words=self.min_words,
                             separator=self.attribute_separator, grounded=self.grounded)
