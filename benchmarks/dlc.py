"""``dlc``: DLC-Bench-style detailed localized captioning, scored by attribute questions about each region.

File format (JSON lines, one region each; documented in docs/benchmarks.md)::

    {"id": 3, "image": "000001.jpg", "regions": [{"bbox": [x, y, w, h]}], "class_name": "red circle",
     "questions": [{"type": "positive", "question": "What is the colour of the object?",
                    "choices": [{"text": "red", "score": 1, "keywords": ["red"]},
                                {"text": "orange", "score": 0.5, "keywords": ["orange"]},
                                {"text": "another colour", "score": -1, "keywords": ["blue"]},
                                {"text": "not mentioned", "score": 0, "default": true}]},
                   {"type": "negative", ...}]}

As in DLC-Bench, the judge reads only the generated description (never the image) and answers each question
by picking a choice; the choice's score counts (+1 right, −1 wrong, 0.5 partially right, 0 not mentioned).
Per region, Pos. and Neg. are the mean scores of its positive and negative questions; the benchmark's
``pos``/``neg`` are their means over regions (×100) and ``avg`` their average. Without a ``judge:`` the rules
judge picks the first choice whose ``keywords`` all occur as words in the description, else the ``default``
choice (score 0 when there is none); with a judge LLM, the choice letter it answers (unparsed → 0, counted).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from regionvlm.evaluation.benchmark import Benchmark
from regionvlm.evaluation.judges import build_judge
from regionvlm.registry import BENCHMARKS

JUDGE_PROMPT = (
    "Read the description of an object and answer the question about the object by choosing one option. "
    "Use only the description.\nDescription: {description}\nQuestion: {question}\n{options}\n"
    "Answer with the letter of one option.\nAnswer:")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _has_words(text: str, keyword: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(keyword.lower())}(?![\w-])", text) is not None


def rules_choice(description: str, choices: Sequence[Mapping]) -> int | None:
    """Index of the first choice whose keywords all occur in the description, else the default choice."""
    text = description.lower()
    for i, c in enumerate(choices):
        kws = c.get("keywords") or []
        if kws and all(_has_words(text, k) for k in kws):
            return i
    return next((i for i, c in enumerate(choices) if c.get("default")), None)


def parse_choice_letter(reply: str, n: int) -> int | None:
    m = re.search(rf"\b([{LETTERS[:n]}])\b", reply.strip())
    return LETTERS.index(m.group(1)) if m else None


@BENCHMARKS.register("dlc")
class DLC(Benchmark):
    """DLC-Bench-style detailed region captions judged by attribute questions: Pos., Neg., Avg."""

    name = "dlc"
    annotation_files = "DLC-style question jsonl (docs/benchmarks.md)"
    default_prompt: ClassVar[dict] = {"type": "detailed_caption"}

    def __init__(self, annotations, images: str | None = None, prompt: Any = None,
                 limit: int | None = None, judge: Any = None):
        super().__init__(annotations, images=images, prompt=prompt, limit=limit)
        self.judge_node = judge

    def dataset_nodes(self) -> list[dict]:
        return [{"type": "dlc", "path": self.annotation_paths[0]}]

    def load_annotations(self) -> dict[str, dict]:
        return {str(r["id"]): r for r in self.datasets[0].items}

    def score(self, predictions: Mapping[str, dict], annotations: Any = None) -> dict[str, float]:
        rows = annotations or self.annotations
        asked = [(rows[k], q, self.postprocess(p["text"])) for k, p in sorted(predictions.items())
                 for q in rows[k]["questions"]]
        judge = build_judge(self.judge_node)
        if judge is None:
            picks = [rules_choice(desc, q["choices"]) for _, q, desc in asked]
        else:
            prompts = [JUDGE_PROMPT.format(description=desc, question=q["question"], options="\n".join(
                f"{LETTERS[i]}. {c.get('text', '')}" for i, c in enumerate(q["choices"]))) for _, q, desc in asked]
            picks = [parse_choice_letter(reply, len(q["choices"])) for (_, q, _), reply in zip(asked, judge(prompts))]
        per_region: dict[str, dict[str, list[float]]] = {}
        unparsed = 0
        for (row, q, _), pick in zip(asked, picks):
            unparsed += pick is None
            s = 0.0 if pick is None else float(q["choices"][pick]["score"])
            per_region.setdefault(str(row["id"]), {"positive": [], "negative": []})[q["type"]].append(s)
        pos = [sum(v["positive"]) / len(v["positive"]) for v in per_region.values() if v["positive"]]
        neg = [sum(v["negative"]) / len(v["negative"]) for v in per_region.values() if v["negative"]]
        p = 100.0 * sum(pos) / len(pos) if pos else 0.0
        n = 100.0 * sum(neg) / len(neg) if neg else 0.0
        return {"pos": p, "neg": n, "avg": (p + n) / 2, "unparsed": unparsed}
