"""``spatial``: SpatialRGPT-Bench, ``SpatialRGPT-Bench_v1.json`` read as distributed (``spatialrgpt_bench``).

Reference: SpatialRGPT ``scripts/srgpt/eval/evaluate_spatial_with_gpt4.py``. The model is asked the human turn
of ``conversations`` (``<mask>`` k → ``<region{k}>``); the answer turn is the ground truth the judge compares
with; the row id is the question's ``id``. Per question, a reading of the answer:

- qualitative: a 0/1 mark; grouped by category as the reference does (tall/short, left/right, below/above,
  behind/front, big/small, wide/thin) → ``qualitative/<group>`` and ``qualitative_accuracy`` (×100);
- quantitative lengths (``distance_data``, ``vertical_distance_data``, ``horizontal_distance_data``,
  ``width_data``, ``height_data``): answer and response in metres; success when 0.75·gt ≤ pred ≤ 1.25·gt →
  ``quantitative/<name>/success`` (×100) and ``quantitative/<name>/abs_rel`` (mean |gt−pred|/gt over read
  answers, as the reference's ``compute_errors``; a ground truth of 0 m, whose relative error the reference makes
  infinite, is left out), with ``…/abs_rel_count`` (the answers it averages);
- ``direction``: answer and response in clock positions; success when they differ by at most one hour →
  ``quantitative/direction/success`` and ``quantitative/direction/error_deg`` (mean hours × 30, with
  ``…/error_deg_count``);
- ``quantitative_success`` over all of them (×100). An answer that cannot be read fails and is counted in
  ``unparsed`` (the reference's match-fail count); other quantitative categories are skipped, as there.

A mean over zero items is None (``null`` in JSON, "—" in tables), never 0: ``qualitative_accuracy`` and
``quantitative_success`` come with ``qualitative_count`` / ``quantitative_count``.

Readers: ``judge:`` a judge LLM given the reference's own prompts, few-shot examples included
(``spatial_judge.py``), and read as the reference reads its JSON replies (``your_mark``; ``answer_in_meters`` /
``response_in_meters``; ``answer_direction`` / ``response_direction``) — the reference asks gpt-4-turbo through
the OpenAI API in JSON mode with the system message ``JUDGE_SYSTEM`` (``openai_judge`` with ``system`` and
``json_mode: true``, as benchmarks/spatial.yaml shows); the exchanges are kept in a judge cache
(`RegionvlmJudgeCache`, ``<predictions>_judge.json``). ``judge: null``: rules, a named approximation: yes/no
polarity of answer and response (predicates; an empty response says neither and is unparsed), the region named
(choices: the response's "Region [x]"/``<regionx>`` 1-based as our prompts ask, the ground truth's "Region [k]"
0-based as the bench writes it), the first length with a unit, the first "N o'clock".
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, ClassVar

from regionvlm.benchmarks.spatial_judge import spatial_judge_prompt

from regionvlm.data.datasets import spatial_kind
from regionvlm.evaluation.benchmark import Benchmark
from regionvlm.evaluation.judge_cache import Job, RegionvlmJudgeCache, judge_jobs
from regionvlm.evaluation.judges import build_judge
from regionvlm.evaluation.lengths import clock_success, parse_clock, parse_length_m, quantitative_success
from regionvlm.registry import BENCHMARKS
from regionvlm.text.prompts import parse_region_index

QUALITATIVE_GROUPS = (("short", "tall/short"), ("tall", "tall/short"), ("left", "left/right"),
                      ("right", "left/right"), ("below", "below/above"), ("above", "below/above"),
                      ("behind", "behind/front"), ("front", "behind/front"), ("big", "big/small"),
                      ("small", "big/small"), ("wide", "wide/thin"), ("thin", "wide/thin"))
QUANTITATIVE_NAMES = {"vertical_distance_data": "vertical_distance", "horizontal_distance_data": "horizontal_distance",
                      "distance_data": "direct_distance", "width_data": "width", "height_data": "height",
                      "direction": "direction"}
_NEGATIVE = {"no", "not", "incorrect", "isn", "doesn", "aren", "wrong", "false", "neither"}


def qualitative_group(category: str) -> str:
    return next((g for key, g in QUALITATIVE_GROUPS if key in category), category)


def polarity(text: str) -> bool:
    """True unless the text negates ("Incorrect, Region [0] is not ..." → False)."""
    return not (_NEGATIVE & set(re.findall(r"[a-z]+", text.lower())))


def _json_reply(reply: str) -> dict:
    m = re.search(r"\{.*\}", reply, re.DOTALL)
    body = m.group() if m else "{" + reply + "}"
    try:
        out = json.loads(body)
    except json.JSONDecodeError:
        return {}
    return out if isinstance(out, dict) else {}


@BENCHMARKS.register("spatial")
class Spatial(Benchmark):
    """SpatialRGPT-Bench: qualitative accuracy and quantitative success per category, as the reference."""

    name = "spatial"
    annotation_files = "SpatialRGPT-Bench_v1.json"
    default_prompt: ClassVar[dict] = {"type": "spatial_qa"}
    judge_cache_suffix: ClassVar[str] = "_judge.json"

    def __init__(self, annotations, images: str | None = None, prompt: Any = None,
                 limit: int | None = None, judge: Any = None, region: str = "mask", judge_cache: str | None = None):
        """``judge_cache``: a regionvlm judge cache to read the judge's replies from and add new ones to."""
        super().__init__(annotations, images=images, prompt=prompt, limit=limit)
        self.judge_node, self.region, self.judge_cache = judge, region, judge_cache

    def dataset_nodes(self) -> list[dict]:
        return [{"type": "spatialrgpt_bench", "path": self.annotation_paths[0], "region": self.region}]

    def load_annotations(self) -> dict[str, dict]:
        return {str(r["id"]): r for r in self.datasets[0].items}

    # -- readings: (answer value, response value) or a mark; None = could not be read ------------------------------
    @staticmethod
    def _read_rules(row: dict, text: str) -> Any:
        gt, kind = row["conversations"][1]["value"], spatial_kind(row["qa_info"])
        if not text.strip():
            return None   # an empty answer says neither yes nor no, names no region and no length
        if kind == "predicate":
            return int(polarity(text) == polarity(gt))
        if kind == "choice":
            n = max(len(row.get("rle") or row.get("bbox") or []), 1)
            k, g = parse_region_index(text, n), parse_region_index(gt, n, one_based=False)
            return None if k is None or g is None else int(k == g)
        parse = parse_clock if kind == "direction" else parse_length_m
        a, r = parse(gt), parse(text)
        return None if a is None or r is None else (a, r)

    def _read_judged(self, judge, items: list[tuple[dict, str]], cache: RegionvlmJudgeCache | None = None
                     ) -> list[Any]:
        """The reference's prompts (``spatial_judge``) to the judge (replies from ``cache`` where it has them), its
        JSON replies read as the reference reads them; a prompt the reference could not build, or a reply without
        the keys, is a match failure (None)."""
        prompts = [spatial_judge_prompt(row["qa_info"], row.get("text_q", ""), row["conversations"][1]["value"], text)
                   for row, text in items]
        jobs = [Job(str(row["id"]), text, [prompt]) for (row, text), prompt in zip(items, prompts)
                if prompt is not None]
        replies = judge_jobs(judge, jobs, cache)
        out: list[Any] = []
        for (row, _), prompt in zip(items, prompts):
            if prompt is None:
                out.append(None)
                continue
            got, kind = _json_reply(replies[str(row["id"])][0]), spatial_kind(row["qa_info"])
            keys = {"direction": ("answer_direction", "response_direction"),
                    "quantitative": ("answer_in_meters", "response_in_meters")}.get(kind)
            try:
                if keys is None:   # a null mark scores 0 there without counting as a match failure
                    out.append(int(float(got["your_mark"] or 0) > 0))
                else:
                    cast = int if kind == "direction" else float
                    out.append((cast(got[keys[0]]), cast(got[keys[1]])))
            except (KeyError, TypeError, ValueError):
                out.append(None)
        return out

    def score(self, predictions: Mapping[str, dict], annotations: Any = None) -> dict[str, float]:
        rows = annotations or self.annotations
        items = [(rows[k], self.postprocess(p["text"])) for k, p in sorted(predictions.items())]
        items = [(r, t) for r, t in items
                 if r["qa_info"].get("type") != "quantitative" or r["qa_info"].get("category") in QUANTITATIVE_NAMES]
        judge = build_judge(self.judge_node)
        cache = RegionvlmJudgeCache(self.judge_cache, benchmark=self.name) if self.judge_cache else None
        if judge is None and cache is None:
            readings = [self._read_rules(r, t) for r, t in items]
        else:
            readings = self._read_judged(judge, items, cache)
            if cache is not None:
                self.notes.append(cache.note())
        qual, succ, errs = defaultdict(list), defaultdict(list), defaultdict(list)
        unparsed = 0
        for (row, _), reading in zip(items, readings):
            unparsed += reading is None
            category, kind = row["qa_info"].get("category", ""), spatial_kind(row["qa_info"])
            if kind in ("predicate", "choice"):
                qual[qualitative_group(category)].append(bool(reading))
                continue
            name = QUANTITATIVE_NAMES[category]
            ok = False
            if reading is not None:
                gt, pred = reading
                if kind == "direction":
                    ok, err = clock_success(pred, gt)
                    errs[name].append(err * 30.0)   # hours → degrees, as the reference prints it
                else:
                    ok, _ = quantitative_success(pred, gt)
                    if gt:   # a 0 m ground truth has no relative error (the reference's is infinite)
                        errs[name].append(abs(gt - pred) / gt)
            succ[name].append(ok)
        pct = lambda xs: 100.0 * sum(xs) / len(xs) if xs else None
        mean = lambda xs: sum(xs) / len(xs) if xs else None
        marks = [x for v in qual.values() for x in v]
        hits = [x for v in succ.values() for x in v]
        out: dict[str, Any] = {"qualitative_accuracy": pct(marks), "qualitative_count": len(marks),
                               "quantitative_success": pct(hits), "quantitative_count": len(hits),
                               "unparsed": unparsed}
        out.update({f"qualitative/{g}": pct(v) for g, v in sorted(qual.items())})
        for name, v in sorted(succ.items()):
            out[f"quantitative/{name}/success"] = pct(v)
            err = "error_deg" if name == "direction" else "abs_rel"
            out[f"quantitative/{name}/{err}"] = mean(errs[name])
            out[f"quantitative/{name}/{err}_count"] = len(errs[name])
        return out
