"""Category answers compared by name: label normalisation and exact-match accuracy (region classification).

Pure functions, so the same numbers come out of ``regionvlm eval`` and ``regionvlm score``; percentages are ×100,
as papers print them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(r"[^\w\s]")
_UNCHANGED_PLURAL = {"glasses", "scissors", "pants", "shorts", "jeans", "bus", "grass", "glass", "skis",
                     "species", "series", "dress", "cross", "boss", "mouse", "person"}


def singularize(word: str) -> str:
    """A small, deterministic English singulariser for category names ("buses" → "bus", "skis" stays)."""
    if word in _UNCHANGED_PLURAL or len(word) <= 3:
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "sses", "xes", "zes", "uses")):
        return word[:-2]
    if word.endswith("ves") and word not in ("knives",):
        return word[:-3] + "f"
    if word == "knives":
        return "knife"
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def normalize_label(text: str) -> str:
    """Lower case, punctuation and underscores → spaces, articles dropped, every word singular.

    ``"The Hot-Dogs."`` → ``"hot dog"``; both the prediction and the category name go through it before the
    exact-match comparison."""
    text = _PUNCT.sub(" ", text.lower().replace("_", " "))
    words = [singularize(w) for w in text.split() if w not in _ARTICLES]
    return " ".join(words)


def reference_label(text: str) -> str:
    """SpatialRGPT's ``eval_coco_obo.py`` reading: the stripped answer as is; a category name lower-cased (its
    accuracy compares them with ``==``, so "Dog", "dogs" and "a dog" are wrong for "dog")."""
    return text.strip()


def exact_match_accuracy(predictions: Sequence[str], references: Sequence[str],
                         protocol: str = "lenient") -> float:
    """Percentage of predictions equal to their reference: ``reference`` compares the stripped answer with the
    lower-cased name exactly (SpatialRGPT's ``eval_coco_obo.py``); ``lenient`` compares both after
    `normalize_label` (plurals, articles, case and punctuation forgiven)."""
    if not predictions:
        return 0.0
    if protocol == "reference":
        pairs = ((reference_label(p), r.lower()) for p, r in zip(predictions, references, strict=True))
    else:
        pairs = ((normalize_label(p), normalize_label(r)) for p, r in zip(predictions, references, strict=True))
    return 100.0 * sum(p == r for p, r in pairs) / len(predictions)
