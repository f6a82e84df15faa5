"""``spatial``: SpatialRGPT-Bench-style region spatial QA (qualitative relations, quantitative sizes/distances).

File format (JSON lines, one question each; documented in docs/benchmarks.md)::

    {"id": 7, "image": "000001.jpg", "regions": [{"bbox": [x, y, w, h]}, ...],
     "question": "Is <region1> to the left of <region2>?", "answer": "Yes, ...",
     "qa_info": {"type": "qualitative", "category": "left_predicate", "label": "yes"}}

``label``: "yes"/"no" for ``*_predicate`` questions, the 1-based region number for ``*_choice`` questions;
quantitative rows carry ``"value"`` (metres) instead. ``<regionK>`` refers to ``regions[K-1]`` (the original
benchmark writes "Region [K-1]").

Scoring follows SpatialRGPT-Bench's ``evaluate_spatial_with_gpt4.py``: qualitative accuracy; quantitative
success when 0.75·gt ≤ pred ≤ 1.25·gt, relative error |pred−gt|/(gt+1e-4) averaged over parsed answers only,
unparsed answers count as failures (``unparsed``). Answers are read by rules (yes/no, "Region [x]", a number
with a unit) or, with ``judge:``, by a judge LLM using the reference's questions.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, ClassVar

from regionvlm.data.datasets import question_kind
from regionvlm.evaluation.answers import parse_region_index, parse_yes_no
from regionvlm.evaluation.benchmark import Benchmark
from regionvlm.evaluation.judges import build_judge
from regionvlm.evaluation.lengths import parse_length_m, quantitative_success
from regionvlm.registry import BENCHMARKS

JUDGE_QUALITATIVE = (
    "You should help me to evaluate the response given the question and the correct answer.\n"
    "To mark a response, output a single integer: 1 if the response matches the answer, 0 if it does not.\n"
    "Question: {question}\nAnswer: {answer}\nResponse: {response}\nMark:")
JUDGE_QUANTITATIVE = (
    "Convert the length in the response to meters (1 inch = 0.0254 meters, 1 foot = 0.3048 meters, "
    "1 centimeter = 0.01 meters). Output only the number of meters.\n"
    "Question: {question}\nResponse: {response}\nMeters:")


@BENCHMARKS.register("spatial")
class Spatial(Benchmark):
    """SpatialRGPT-Bench-style spatial QA: qualitative accuracy, quantitative success and relative error."""

    name = "spatial"
    annotation_files = "spatial QA jsonl (docs/benchmarks.md)"
    default_prompt: ClassVar[dict] = {"type": "spatial_qa"}

    def __init__(self, annotations, images: str | None = None, prompt: Any = None,
                 limit: int | None = None, judge: Any = None, per_category: bool = False):
        super().__init__(annotations, images=images, prompt=prompt, limit=limit)
        self.judge_node, self.per_category = judge, per_category

    def dataset_nodes(self) -> list[dict]:
        return [{"type": "spatial_qa", "path": self.annotation_paths[0]}]

    def load_annotations(self) -> dict[str, dict]:
        return {str(r["id"]): r for r in self.datasets[0].items}

    # -- reading answers ----------------------------------------------------------------------------------------
    def _read_rules(self, row: dict, text: str) -> Any:
        info, kind = row["qa_info"], question_kind(row["qa_info"])
        if kind == "predicate":
            ans = parse_yes_no(text)
            return None if ans is None else ans == info["label"]
        if kind == "choice":
            k = parse_region_index(text, len(row["regions"]))
            return None if k is None else k + 1 == info["label"]
        return parse_length_m(text)

    def _read_judged(self, judge, items: list[tuple[dict, str]]) -> list[Any]:
        prompts = []
        for row, text in items:
            if question_kind(row["qa_info"]) == "quantitative":
                prompts.append(JUDGE_QUANTITATIVE.format(question=row["question"], response=text))
            else:
                prompts.append(JUDGE_QUALITATIVE.format(question=row["question"], answer=row.get("answer", ""),
                                                        response=text))
        out = []
        for (row, _), reply in zip(items, judge(prompts)):
            if question_kind(row["qa_info"]) == "quantitative":
                m = re.search(r"-?\d+(?:\.\d+)?", reply)
                out.append(float(m.group()) if m else None)
            else:
                m = re.search(r"\b[01]\b", reply)
                out.append(None if m is None else m.group() == "1")
        return out

    def score(self, predictions: Mapping[str, dict], annotations: Any = None) -> dict[str, float]:
        rows = annotations or self.annotations
        items = [(rows[k], self.postprocess(p["text"])) for k, p in sorted(predictions.items())]
        judge = build_judge(self.judge_node)
        readings = self._read_judged(judge, items) if judge else [self._read_rules(r, t) for r, t in items]
        qual, succ, errs = defaultdict(list), defaultdict(list), []
        unparsed = 0
        for (row, _), reading in zip(items, readings):
            cat = row["qa_info"].get("category", "unknown")
            if reading is None:
                unparsed += 1
            if question_kind(row["qa_info"]) == "quantitative":
                ok = False
                if reading is not None:
                    ok, err = quantitative_success(reading, float(row["qa_info"]["value"]))
                    errs.append(err)
                succ[cat].append(ok)
            else:
                qual[cat].append(bool(reading))
        pct = lambda xs: 100.0 * sum(xs) / len(xs) if xs else 0.0
        all_q = [x for v in qual.values() for x in v]
        all_s = [x for v in succ.values() for x in v]
        out = {"qualitative_accuracy": pct(all_q), "quantitative_success": pct(all_s),
               "quantitative_rel_error": 100.0 * sum(errs) / len(errs) if errs else 0.0, "unparsed": unparsed}
        if self.per_category:
            out.update({f"{c}/accuracy": pct(v) for c, v in sorted(qual.items())})
            out.update({f"{c}/success": pct(v) for c, v in sorted(succ.items())})
        return out
