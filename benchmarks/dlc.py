"""``dlc``: DLC-Bench (Describe Anything), detailed localized captions scored by a judge's answers.

Reference: DAM ``evaluation/eval_model_outputs.py``. ``annotations`` = the official ``annotations.json``
(COCO format: images, one region per annotation), ``qa.json`` (``{ann_id: [{"question", "choices":
[[text, score], ...], "type": "positive"|"negative"}]}``) and ``class_names.json`` (``{ann_id: name}``), read
as distributed; a row's id is the annotation id. Generation allows 512 new tokens, as DAM's does.

Scoring as the reference: a judge that sees only the description answers, per region, a recognition question ("Is
it likely that the object in the description is a <class> or an object of a similar type? ...", plural form for
plural names; number and article by the ``inflect`` package, as DAM's) and then each question, every one in DAM's
prompt with the choices lettered A–E; the reply is read with DAM's ``parse_pred`` rules (`dam_parse_choice`; no
match → score 0). The recognition gate: when the judge says the description does not recognise the object, every
score of the region is capped at 0. Per region, Pos./Neg. are the means of its positive/negative question scores;
``pos`` is their mean over regions, ``neg`` over regions that have negatives, ``avg`` = (pos + neg)/2 (×100).

``judge: null`` reads the description with rules instead (a named approximation, not the reference): the
recognition answer is "Yes" when a word of the class name (singular) occurs in the description, and each
question's choice is `dam_parse_choice` applied to the description itself (the choice it mentions), else the
choice saying "not mentioned" where there is one.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from regionvlm.errors import DataError
from regionvlm.evaluation.benchmark import Benchmark
from regionvlm.evaluation.judges import build_judge
from regionvlm.evaluation.labels import singularize
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


def _words(text: str) -> set[str]:
    return {singularize(w) for w in re.findall(r"[a-z]+", text.lower())}


@BENCHMARKS.register("dlc")
class DLC(Benchmark):
    """DLC-Bench: detailed region captions judged by multiple-choice questions: Pos., Neg., Avg."""

    name = "dlc"
    id_key = "ann_id"
    annotation_files = "DLC-Bench annotations.json, qa.json and class_names.json"
    min_files = max_files = 3
    default_prompt: ClassVar[dict] = {"type": "detailed_caption"}

    def __init__(self, annotations, images: str | None = None, prompt: Any = None,
                 limit: int | None = None, judge: Any = None, max_new_tokens: int = 512):
        """``max_new_tokens``: generation length for the descriptions (DAM's ``get_model_outputs.py``: 512)."""
        super().__init__(annotations, images=images, prompt=prompt, limit=limit)
        self.judge_node = judge
        self.generation = {"max_new_tokens": max_new_tokens}

    def dataset_nodes(self) -> list[dict]:
        return [{"type": "dlc_bench", "ann_file": self.annotation_paths[0], "qa_file": self.annotation_paths[1]}]

    def load_annotations(self) -> dict[str, dict]:
        from regionvlm.data import formats

        path = self.annotation_paths[2]
        names = formats.read_json(path)
        if not isinstance(names, dict):
            raise DataError(f"{path}: expected an object of class names keyed by annotation id")
        qa = self.datasets[0].qa
        out = {}
        for key in (str(a["id"]) for a in self.datasets[0].items):
            if not isinstance(names.get(key), str):
                raise DataError(f"{path}: {key}: missing class name")
            for j, q in enumerate(qa[key]):
                if not isinstance(q, dict) or q.get("type") not in ("positive", "negative") or not all(
                        isinstance(c, list) and len(c) == 2 for c in q.get("choices") or [None]):
                    raise DataError(f"{self.annotation_paths[1]}: {key}[{j}]: expected type positive|negative "
                                    "and choices [[text, score], ...]")
            out[key] = {"class_name": names[key], "questions": qa[key]}
        return out

    def _replies(self, judge, asked: list[tuple[str, str, dict | None]]) -> list[str]:
        """One reply per (key, description, question) — question None: the recognition question."""
        if judge is not None:
            rows = self.annotations
            return judge([judge_prompt(desc, q if q is not None else {
                "question": recognition_question(rows[key]["class_name"]),
                "choices": [["Yes", "correct"], ["No", "incorrect"]]}) for key, desc, q in asked])
        out = []
        for key, desc, q in asked:
            if q is None:
                name_words = _words(self.annotations[key]["class_name"])
                out.append("Yes" if name_words & _words(desc) else "No")
            else:
                k = dam_parse_choice(desc, [c[0] for c in q["choices"]])
                if k is None:   # mentions no choice: the "not mentioned" choice where there is one
                    k = next((i for i, c in enumerate(q["choices"]) if "not mentioned" in c[0].lower()), None)
                out.append("" if k is None else q["choices"][k][0])
        return out

    def score(self, predictions: Mapping[str, dict], annotations: Any = None) -> dict[str, float]:
        rows = annotations or self.annotations
        asked = [(k, self.postprocess(p["text"]), q) for k, p in sorted(predictions.items(), key=lambda x: int(x[0]))
                 for q in [None, *rows[k]["questions"]]]
        replies = iter(self._replies(build_judge(self.judge_node), asked))
        pos, neg = [], []
        unparsed = not_recognised = 0
        for key in sorted(predictions, key=int):
            rec = dam_parse_choice(next(replies), ["Yes", "No"])
            unparsed += rec is None
            recognised = rec == 0   # an unreadable recognition answer counts as not recognised
            not_recognised += not recognised
            scores: dict[str, list[float]] = {"positive": [], "negative": []}
            for q in rows[key]["questions"]:
                k = dam_parse_choice(next(replies), [c[0] for c in q["choices"]])
                unparsed += k is None
                s = 0.0 if k is None else float(q["choices"][k][1])
                scores[q["type"]].append(s if recognised else min(0.0, s))
            if scores["positive"]:
                pos.append(sum(scores["positive"]) / len(scores["positive"]))
            if scores["negative"]:
                neg.append(sum(scores["negative"]) / len(scores["negative"]))
        p = 100.0 * sum(pos) / len(pos) if pos else 0.0
        n = 100.0 * sum(neg) / len(neg) if neg else 0.0
        return {"pos": p, "neg": n, "avg": (p + n) / 2, "not_recognised": not_recognised, "unparsed": unparsed}
