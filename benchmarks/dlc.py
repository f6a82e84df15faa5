"""``dlc``: DLC-Bench (Describe Anything), detailed localized captions scored by a judge's answers.

Reference: DAM ``evaluation/eval_model_outputs.py``. ``annotations`` = the official files as distributed:
``[annotations.json, qa.json, class_names.json]`` to generate and score (``annotations.json``: COCO format, one
region per annotation), or only ``[qa.json, class_names.json]`` to score, which is all DAM's scorer reads
(``qa.json``: ``{ann_id: [{"question", "choices": [[text, score], ...], "type": "positive"|"negative"}]}``,
``class_names.json``: ``{ann_id: name}``). A row's id is the annotation id; the regions scored are qa.json's keys
(its order, as DAM's), the first ``limit`` of them (with annotations.json: of the generated samples). Generation
allows 512 new tokens, as DAM's does. Predictions are our JSON lines or DAM's own file, one JSON object
``{region key: description}`` (``model_outputs_cache/*.json``; its ``"query"`` entry, which DAM's
``get_model_outputs.py`` adds, is skipped).

Scoring as the reference, `dam_evaluate` being DAM's ``evaluate`` without the API call: a judge that sees only
the description answers, per region, a recognition question ("Is it likely that the object in the description is
a <class> or an object of a similar type? ...", plural form for plural names; number and article by the
``inflect`` package, as DAM's) and then each question, every one in DAM's prompt with the choices lettered A–E;
the reply is read with DAM's ``parse_pred`` rules (`dam_parse_choice`; no match → score 0). The recognition gate:
when the judge says the description does not recognise the object, every score of the region is capped at 0.
Per region, Pos./Neg. are the means of its positive/negative question scores; ``pos`` is their mean over regions,
``neg`` over regions that have negatives (``neg_count`` of them; null when none), ``avg`` = (pos + neg)/2 (×100).
An unreadable recognition reply counts as not recognised (DAM's script stops there with a ValueError).

Judge cache: the judge's exchanges are kept in DAM's own ``<pred>_eval.json`` layout (`DamEvalCache`), written as
they come; a cache DAM's script wrote re-scores here with no judge, and one written here re-scores there.

``judge: null`` (and no cache) reads the description with rules instead (a named approximation, not the
reference): the recognition answer is "Yes" when a word of the class name (singular) occurs in the description,
and each question's choice is `dam_parse_choice` applied to the description itself (the choice it mentions), else
the choice saying "not mentioned" where there is one.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from regionvlm.errors import ConfigError, DataError
from regionvlm.evaluation.benchmark import Benchmark
from regionvlm.evaluation.judge_cache import DamEvalCache, Job, judge_jobs
from regionvlm.evaluation.judges import build_judge
from regionvlm.evaluation.labels import singularize
from regionvlm.evaluation.predictions import index_predictions
from regionvlm.registry import BENCHMARKS

# DAM's judge prompt (eval_model_outputs.py), word for word: the judge's input decides the numbers.
DAM_JUDGE_PROMPT = """Answer the multiple-choice question based on the text description of an object in an image. You need to follow these rules:
1. Do not output any reasoning. Do not perform correction. Please output exactly one answer from the choices for each question. Do not repeat the question.
2. There is no need for exact matching. Please choose the closest option based on the description.

The description is:
{pred_caption}

From the description above, please answer the following question with one of the choices:
{question_text_str}
"""  # noqa: E501
LETTERS = "abcde"


def dam_parse_choice(reply: str, choices: Sequence[str]) -> int | None:
    """DAM's ``parse_pred``: the choice index a judge's reply names, else None (scored 0).

    In order: the reply equals a choice, "<letter>. <choice>" or the letter; exactly one choice occurs in the
    reply; the reply starts with "<letter>."; several occur: the one starting last (longest on a tie); the reply
    occurs in choices: the longest such choice; a lone letter (or a letter then a newline)."""
    pred = reply.strip().lower()
    if not pred:
        return None
    found = []
    for i, choice in enumerate(choices):
        c = choice.strip().lower()
        if c == pred or pred == f"{LETTERS[i]}. {c}" or pred == LETTERS[i]:
            return i
        if c in pred:
            found.append((i, pred.index(c), len(c)))
    if len(found) == 1:
        return found[0][0]
    if pred[0] in LETTERS and len(pred) > 1 and pred[1] == ".":
        return LETTERS.index(pred[0])
    if found:
        last = max(pos for _, pos, _ in found)
        return max((f for f in found if f[1] == last), key=lambda f: f[2])[0]
    containing = [(i, len(c.strip())) for i, c in enumerate(choices) if pred in c.strip().lower()]
    if containing:
        return max(containing, key=lambda x: x[1])[0]
    if pred[0] in LETTERS and (len(pred) == 1 or pred[1] == "\n"):
        return LETTERS.index(pred[0])
    return None


@functools.cache
def _inflect():
    import inflect  # DAM's own dependency for the recognition question's wording

    return inflect.engine()


def is_plural(name: str) -> bool:
    """DAM's ``is_plural``: inflect's ``singular_noun(name) is not False`` on the whole name, except "bus"
    (which inflect would singularise to "bu")."""
    if name == "bus":
        return False
    return _inflect().singular_noun(name) is not False


def with_article(name: str) -> str:
    """inflect's ``a(name)`` as DAM calls it: "an hour", "a unicorn", "an x-ray"."""
    return _inflect().a(name)


def recognition_question(class_name: str) -> str:
    if is_plural(class_name):
        return (f"Is it likely that the objects in the description are {class_name} or objects of a similar type? "
                "Again, It does not have to be an exact match.")
    return (f"Is it likely that the object in the description is {with_article(class_name)} or an object of a "
            "similar type? Again, It does not have to be an exact match.")


def judge_prompt(description: str, question: Mapping) -> str:
    lines = [question["question"]] + [f"{LETTERS[i].upper()}. {c[0]}" for i, c in enumerate(question["choices"])]
    return DAM_JUDGE_PROMPT.format(pred_caption=description, question_text_str="\n".join(lines).strip())


def question_dicts(class_name: str, questions: Sequence[Mapping]) -> list[dict]:
    """A region's questions as DAM asks them: the recognition question first, then qa.json's, in order."""
    return [{"question": recognition_question(class_name), "choices": [["Yes", "correct"], ["No", "incorrect"]],
             "type": "recognition"}, *(dict(q) for q in questions)]


def dam_evaluate(questions: Sequence[Mapping], prompts: Sequence[str], responses: Sequence[str]) -> dict:
    """DAM's ``evaluate`` for one region given the judge's replies: its ``info`` record, key for key (details per
    question, ``prompt``, ``response``, ``score``, ``score_pos``, ``score_neg``, ``neg_valid_num``,
    ``recognition_result``). Departures where DAM's script fails: an unreadable recognition reply is "not
    recognised" (DAM raises ValueError); a region without positives has ``score_pos`` None (DAM divides by 0)."""
    answers = [r.strip() for r in responses]
    indices = [dam_parse_choice(a, [c[0] for c in q["choices"]]) for a, q in zip(answers, questions)]
    results = [q["choices"][k][1] if k is not None else 0 for k, q in zip(indices, questions)]
    details: dict[str, list[dict]] = {"positive": [], "negative": [], "recognition": []}
    pos: list[float] = []
    neg: list[float] = []
    recognised = None
    for i, (q, result) in enumerate(zip(questions, results)):
        detail = {**q, "pred_answer": answers[i], "pred_index": indices[i]}
        if q["type"] == "recognition":
            recognised = result == "correct"
            details["recognition"].append({**detail, "eval_result": result})
            continue
        if not recognised:
            result = min(0, result)
        (pos if q["type"] == "positive" else neg).append(result)
        details[q["type"]].append({**detail, "question_index": i - 1, "eval_result": result})
    both = pos + neg
    return {"details_positives": details["positive"], "details_negatives": details["negative"],
            "details_recognition": details["recognition"], "prompt": list(prompts), "response": list(responses),
            "score": sum(both) / len(both) if both else None,
            "score_pos": sum(pos) / len(pos) if pos else None,
            "score_neg": sum(neg) / len(neg) if neg else None,
            "neg_valid_num": len(neg), "recognition_result": recognised}


def dam_predictions(path: str | os.PathLike) -> list[tuple[int, dict]] | None:
    """The rows of a predictions file in DAM's layout (one JSON object ``{region key: description}``), or None
    for any other file (our JSON lines). DAM's ``"query"`` entry is skipped; a description DAM's scorer would
    refuse (not a string, or an ``Error:`` message) is a `DataError` naming the key."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        data = json.loads(text) if text.lstrip().startswith("{") else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None   # JSON lines (several objects), or a problem the JSON-lines reader names
    if not isinstance(data, dict) or ("id" in data and "text" in data):
        return None
    rows = []
    for i, (key, text) in enumerate(data.items(), 1):
        if key == "query" and isinstance(text, str):
            continue
        if not isinstance(text, str):
            raise DataError(f"{path}: {key}: expected a description string, got {type(text).__name__}")
        if text.startswith("Error:"):
            raise DataError(f"{path}: {key}: the description is an error message ({text[:40]!r}); DAM's scorer "
                            "refuses it too")
        rows.append((i, {"id": key, "text": text}))
    return rows


def _words(text: str) -> set[str]:
    return {singularize(w) for w in re.findall(r"[a-z]+", text.lower())}


@BENCHMARKS.register("dlc")
class DLC(Benchmark):
    """DLC-Bench: detailed region captions judged by multiple-choice questions: Pos., Neg., Avg."""

    name = "dlc"
    id_key = "ann_id"
    annotation_files = "DLC-Bench [annotations.json,] qa.json and class_names.json"
    min_files, max_files = 2, 3
    default_prompt: ClassVar[dict] = {"type": "detailed_caption"}
    judge_cache_suffix: ClassVar[str] = "_eval.json"   # DAM's name: <predictions>_eval.json

    def __init__(self, annotations, images: str | None = None, prompt: Any = None,
                 limit: int | None = None, judge: Any = None, max_new_tokens: int = 512,
                 judge_cache: str | None = None):
        """``max_new_tokens``: generation length for the descriptions (DAM's ``get_model_outputs.py``: 512);
        ``judge_cache``: DAM's ``<pred>_eval.json`` to read the judge's replies from and add new ones to."""
        super().__init__(annotations, images=images, prompt=prompt, limit=limit)
        self.judge_node, self.judge_cache = judge, judge_cache
        self.generation = {"max_new_tokens": max_new_tokens}
        *ann, self.qa_path, self.names_path = self.annotation_paths
        self.ann_path = ann[0] if ann else None

    def dataset_nodes(self) -> list[dict]:
        if self.ann_path is None:
            raise ConfigError("dlc: generating descriptions needs DLC-Bench's annotations.json: annotations: "
                              "[annotations.json, qa.json, class_names.json] (scoring needs only qa.json and "
                              "class_names.json)")
        return [{"type": "dlc_bench", "ann_file": self.ann_path, "qa_file": self.qa_path}]

    @cached_property
    def qa(self) -> dict[str, list]:
        from regionvlm.data import formats

        qa = formats.read_json(self.qa_path)
        if not isinstance(qa, dict) or not all(isinstance(v, list) for v in qa.values()):
            raise DataError(f"{self.qa_path}: expected an object of question lists keyed by annotation id")
        return qa

    def reference_ids(self) -> list[str]:
        """qa.json's keys, as DAM's scorer reads them (the first ``limit``; with annotations.json and a limit, the
        generated samples')."""
        if self.ann_path is not None and self.limit is not None:
            return super().reference_ids()
        keys = [str(k) for k in self.qa]
        return keys if self.limit is None else keys[:self.limit]

    def load_annotations(self) -> dict[str, dict]:
        from regionvlm.data import formats

        names = formats.read_json(self.names_path)
        if not isinstance(names, dict):
            raise DataError(f"{self.names_path}: expected an object of class names keyed by annotation id")
        out = {}
        for key in self.reference_ids():
            if not isinstance(names.get(key), str):
                raise DataError(f"{self.names_path}: {key}: missing class name")
            for j, q in enumerate(self.qa[key]):
                if not isinstance(q, dict) or not isinstance(q.get("question"), str) or \
                        q.get("type") not in ("positive", "negative") or not isinstance(q.get("choices"), list) or \
                        not 0 < len(q["choices"]) <= len(LETTERS) or not all(
                        isinstance(c, list) and len(c) == 2 and isinstance(c[0], str) and isinstance(c[1], (int, float))
                        and not isinstance(c[1], bool) for c in q["choices"]):
                    raise DataError(f"{self.qa_path}: {key}[{j}]: expected question, type positive|negative and "
                                    f"1..5 choices [[text, score], ...]")
            out[key] = {"class_name": names[key], "questions": self.qa[key]}
        return out

    def postprocess(self, text: str) -> str:
        """The description as the predictions file holds it: DAM's scorer sends it to the judge unchanged."""
        return text

    def score_file(self, path: str | os.PathLike, allow_partial: bool = False) -> dict[str, float]:
        """Our JSON lines, or DAM's ``{region key: description}`` file."""
        rows = dam_predictions(path)
        if rows is None:
            return super().score_file(path, allow_partial=allow_partial)
        expected = set(self.reference_ids())
        unknown = [r["id"] for _, r in rows if r["id"] not in expected]
        if unknown:
            raise DataError(f"{path}: {unknown[0]}: not a region of {self.qa_path}"
                            + (f" (nor {len(unknown) - 1} more keys)" if len(unknown) > 1 else ""))
        preds = index_predictions(rows, expected, source=str(path), key=self.row_key, allow_partial=allow_partial)
        return self._results(preds, allow_partial)

    def _rules_replies(self, key: str, desc: str, questions: Sequence[Mapping]) -> list[str]:
        out = []
        for q in questions:
            if q["type"] == "recognition":
                name_words = _words(self.annotations[key]["class_name"])
                out.append("Yes" if name_words & _words(desc) else "No")
                continue
            k = dam_parse_choice(desc, [c[0] for c in q["choices"]])
            if k is None:   # mentions no choice: the "not mentioned" choice where there is one
                k = next((i for i, c in enumerate(q["choices"]) if "not mentioned" in c[0].lower()), None)
            out.append("" if k is None else q["choices"][k][0])
        return out

    def score(self, predictions: Mapping[str, dict], annotations: Any = None) -> dict[str, float]:
        rows = annotations or self.annotations
        keys = [k for k in rows if k in predictions]   # qa.json's order, as DAM's loop
        questions = {k: question_dicts(rows[k]["class_name"], rows[k]["questions"]) for k in keys}
        jobs = [Job(k, self.postprocess(predictions[k]["text"]), []) for k in keys]
        for job in jobs:
            job.prompts = [judge_prompt(job.pred, q) for q in questions[job.key]]
        judge = build_judge(self.judge_node)
        cache = DamEvalCache(self.judge_cache, benchmark=self.name) if self.judge_cache else None
        if judge is None and cache is None:
            replies = {j.key: self._rules_replies(j.key, j.pred, questions[j.key]) for j in jobs}
        else:
            replies = judge_jobs(judge, jobs, cache, entry=lambda job, r: {
                "pred": job.pred, **dam_evaluate(questions[job.key], job.prompts, r)})
        infos = {j.key: dam_evaluate(questions[j.key], j.prompts, replies[j.key]) for j in jobs}
        pos = [i["score_pos"] for i in infos.values() if i["score_pos"] is not None]
        neg = [i["score_neg"] for i in infos.values() if i["score_neg"] is not None]
        avg_pos = sum(pos) / len(pos) if pos else None
        avg_neg = sum(neg) / len(neg) if neg else None
        if cache is not None:
            if cache.asked:
                cache.set_averages(avg_pos, avg_neg, keys)
                cache.save()
            self.notes.append(cache.note())
        unparsed = sum(d["pred_index"] is None for i in infos.values() for d in
                       (*i["details_recognition"], *i["details_positives"], *i["details_negatives"]))
        p = None if avg_pos is None else 100.0 * avg_pos
        n = None if avg_neg is None else 100.0 * avg_neg
        return {"pos": p, "neg": n, "avg": None if p is None or n is None else (p + n) / 2,
                "pos_count": len(pos), "neg_count": len(neg),
                "not_recognised": sum(not i["recognition_result"] for i in infos.values()), "unparsed": unparsed}
