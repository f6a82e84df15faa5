"""Reading short answers: which candidate region ("Region [2]."), yes or no, and POPE's yes/no scores.

References: the task-guided "Region [x]" template of RegionGPT; POPE's official ``evaluate.py`` (first sentence,
commas dropped, split on spaces, "no" if No/not/no). Percentages are ×100, as papers print them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_REGION_PATTERNS = (
    re.compile(r"region\s*\[\s*(\d+)\s*\]", re.IGNORECASE),   # the task-guided template "Region [2]"
    re.compile(r"<region(\d+)>", re.IGNORECASE),              # a model that echoes the placeholder
    re.compile(r"region\s*#?\s*(\d+)\b", re.IGNORECASE),       # "region 2"
)


def parse_region_index(text: str, num_candidates: int, one_based: bool = True) -> int | None:
    """0-based candidate index named by the answer ("Region [2]." → 1), or None when no valid index is found.
    The first match of the most specific pattern wins; out-of-range indices are unparseable."""
    for pattern in _REGION_PATTERNS:
        m = pattern.search(text)
        if m:
            k = int(m.group(1)) - (1 if one_based else 0)
            return k if 0 <= k < num_candidates else None
    return None


def parse_yes_no(text: str) -> str | None:
    """"yes"/"no" from the first word that is one (case-insensitive), else None."""
    for w in re.findall(r"[a-z]+", text.lower()):
        if w in ("yes", "no"):
            return w
        if w in ("not", "isn", "doesn", "aren"):
            return "no"
    return None


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
