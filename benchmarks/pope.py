"""``pope``: object hallucination yes/no questions (POPE random / popular / adversarial files).

``annotations``: one or more POPE question files, each read by the ``pope`` dataset; each is a split named after
its file (``coco_pope_random.json`` → ``random``). Answers are parsed exactly as the official ``evaluate.py`` does
(`pope_parse`: first sentence, commas dropped, split on spaces, "no" if No/not/no); metrics per split (×100):
``<split>/accuracy``, ``/precision``, ``/recall``, ``/f1``, ``/yes_ratio``.
Rows carry ``id`` = ``question_id`` and ``split``; ``split`` may be left out when there is a single file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from regionvlm.data.datasets import pope_split
from regionvlm.errors import DataError
from regionvlm.evaluation.benchmark import Benchmark
from regionvlm.registry import BENCHMARKS


def pope_parse(text: str) -> str:
    """The official POPE answer parsing: first sentence (up to the first '.'), commas dropped, split on single
    spaces; "no" if the words contain ``No``, ``not`` or ``no``, else "yes"."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 ("yes" positive) and yes-ratio, ×100, from parsed answers and labels.
    Where the reference would divide by zero, the value is 0."""
    tp = fp = tn = fn = 0
    for p, y in zip(predictions, labels, strict=True):
        pos, lab = p == "yes", y != "no"   # the reference maps any label other than "no" to 1
        tp += pos and lab
        fp += pos and not lab
        tn += (not pos) and not lab
        fn += (not pos) and lab
    n = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": 100.0 * (tp + tn) / n if n else 0.0, "precision": 100.0 * precision,
            "recall": 100.0 * recall, "f1": 100.0 * f1, "yes_ratio": 100.0 * (tp + fp) / n if n else 0.0}


@BENCHMARKS.register("pope")
class Pope(Benchmark):
    """POPE object hallucination: accuracy, precision, recall, F1, yes-ratio per split."""

    name = "pope"
    id_key = "question_id"
    annotation_files = "POPE question files (coco_pope_{random,popular,adversarial}.json)"
    min_files, max_files = 1, None
    default_prompt: ClassVar[dict] = {"type": "yes_no"}

    def __init__(self, annotations, images: str | None = None, prompt: Any = None, limit: int | None = None):
        super().__init__(annotations, images=images, prompt=prompt, limit=limit)
        self.splits = [pope_split(p) for p in self.annotation_paths]
        if len(set(self.splits)) != len(self.splits):
            raise DataError(f"pope: annotations: two files give the same split name ({', '.join(self.splits)})")

    def dataset_nodes(self) -> list[dict]:
        return [{"type": "pope", "path": path} for path in self.annotation_paths]

    def load_annotations(self) -> dict[str, dict[str, dict]]:
        out = {}
        for ds in self.datasets:
            for i, r in enumerate(ds.items, 1):
                if r.get("label") not in ("yes", "no"):
                    raise DataError(f"{ds.path}: row {i}.label: missing; POPE scoring needs 'yes' or 'no'")
            out[ds.split] = {str(r["question_id"]): r for r in ds.items}
        return out

    def row_key(self, row: Mapping) -> str:
        if "split" in row:
            return f"{row['split']}/{row['id']}"
        if len(self.splits) == 1:
            return f"{self.splits[0]}/{row['id']}"
        raise DataError(f"pope: row id={row.get('id')!r} has no 'split' but {len(self.splits)} files are scored")

    def row_extras(self, sample: Mapping) -> dict:
        return {"split": sample["target"]["split"]}

    def postprocess(self, text: str) -> str:
        return pope_parse(text)

    def score(self, predictions: Mapping[str, dict], annotations: Any = None) -> dict[str, float]:
        questions = annotations or self.annotations
        out: dict[str, float] = {}
        for split in self.splits:
            keys = [k for k in predictions if k.split("/", 1)[0] == split]
            if not keys:
                continue
            answers = [self.postprocess(predictions[k]["text"]) for k in keys]
            labels = [questions[split][k.split("/", 1)[1]]["label"] for k in keys]
            out.update({f"{split}/{m}": v for m, v in pope_metrics(answers, labels).items()})
        return out
