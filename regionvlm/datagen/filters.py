"""Stage 5, verification: rules every caption must pass, and an optional judge; the first failing rule is the
region's drop reason (counted in the report).

Reasons, in the order they are checked: ``empty``, ``too_short`` / ``too_long`` (words), ``refusal`` (a refusal
phrase), ``no_class_mention`` (neither the class name, its plural nor a configured synonym), ``near_duplicate``
(word-set Jaccard ≥ ``max_similarity`` with the image's global caption or an earlier kept caption of the same
image), then ``judge`` (the judge does not answer yes).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from regionvlm.datagen.settings import FilterSettings

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
REASONS = ("empty", "too_short", "too_long", "refusal", "no_class_mention", "near_duplicate", "judge")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def class_phrases(class_name: str, synonyms: dict[str, list[str]]) -> list[str]:
    """The phrases that count as naming ``class_name``: the name (``_`` as a space, a parenthesised qualifier
    such as LVIS's ``car_(automobile)`` left out), its plural, and its synonyms."""
    name = re.sub(r"\(.*?\)", " ", class_name.replace("_", " ")).strip().lower()
    phrases = [name, name + "s", name + "es", *(s.lower() for s in synonyms.get(class_name, []))]
    return [" ".join(words(p)) for p in phrases if words(p)]


def mentions(caption: str, phrases: Sequence[str]) -> bool:
    text = f" {' '.join(words(caption))} "
    return any(f" {p} " in text for p in phrases)


def similarity(a: str, b: str) -> float:
    wa, wb = set(words(a)), set(words(b))
    return len(wa & wb) / len(wa | wb) if wa and wb else 0.0


def rule_failure(caption: str, class_name: str | None, others: Sequence[str], s: FilterSettings) -> str | None:
    """The first rule ``caption`` fails (a reason of `REASONS`), or None. ``others``: the image's global caption
    and its captions kept so far."""
    n = len(words(caption))
    if n == 0:
        return "empty"
    if n < s.min_words:
        return "too_short"
    if n > s.max_words:
        return "too_long"
    low = caption.lower()
    if any(phrase.lower() in low for phrase in s.refusals):
        return "refusal"
    if s.require_class and class_name and not mentions(caption, class_phrases(class_name, s.synonyms)):
        return "no_class_mention"
    if any(similarity(caption, o) >= s.max_similarity for o in others):
        return "near_duplicate"
    return None


def judge_says_yes(reply: str) -> bool:
    first = words(reply)[:1]
    return first == ["yes"]
