"""Scope adherence: does an answer stay in the form its question asks for? (RGPT's claim (c) for task guidance.)

A model trained on classification alone tends to answer *every* question with a label; task-guided prompts are
meant to keep each task's answer form apart. These pure functions measure it on two kinds of answer about the
same regions, so ``regionvlm eval`` and ``regionvlm score`` give the same numbers (percentages ×100):

- ``label_rate``: classification answers that are exactly one label of the vocabulary (`scope_label`: case,
  surrounding whitespace and one final period ignored);
- ``accuracy``: classification answers equal to their reference label, read the same way (so an answer is
  right only if it is also a label: ``accuracy`` ≤ ``label_rate``; plurals and articles are not forgiven);
- ``sentence_rate``: open answers that are a sentence, not a bare label (`is_sentence`: at least ``min_words``
  whitespace-separated words and not a vocabulary label);
- ``grounded_rate``: open answers that mention the region's attribute words (`attribute_words`: its category
  name split into words, e.g. "red circle" → red, circle), matched as whole words after `normalize_label`
  (case, punctuation, articles and plurals forgiven); ``any`` word (default) or ``all`` of them;
- ``scope_adherence``: the mean of ``label_rate`` and ``sentence_rate``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from regionvlm.evaluation.labels import normalize_label

GROUNDED_MODES = ("any", "all")


def scope_label(text: str) -> str:
    """An answer as compared with the vocabulary: lower case, surrounding whitespace and one final period off."""
    text = text.strip()
    return text[:-1].rstrip().lower() if text.endswith(".") else text.lower()


def vocabulary_set(names: Iterable[str]) -> set[str]:
    """Category names in `scope_label` form."""
    return {scope_label(n) for n in names}


def is_sentence(text: str, vocabulary: set[str], min_words: int = 4) -> bool:
    """At least ``min_words`` words and not a bare label (``vocabulary`` in `vocabulary_set` form). Four words
    by default: the shortest plain description of a region ("a red circle here", "The circle is red") has
    four, while labels are one to three words."""
    return len(text.split()) >= min_words and scope_label(text) not in vocabulary


def attribute_words(name: str, separator: str | None = None) -> list[str]:
    """The words an open answer about a region of category ``name`` may mention: ``name`` split on
    ``separator`` (None: whitespace), each part in `normalize_label` form; empty parts (articles, punctuation)
    dropped. The synthetic set's "<colour> <shape>" → [colour, shape]; COCO's "traffic light" → [traffic, light]."""
    return [w for w in (normalize_label(part) for part in name.split(separator)) if w]


def mentions(text: str, words: Sequence[str], mode: str = "any") -> bool:
    """Whether ``text`` contains ``any`` (or ``all``) of ``words`` (`attribute_words`) as whole words."""
    padded = f" {normalize_label(text)} "
    hits = [f" {w} " in padded for w in words]
    return bool(hits) and (all(hits) if mode == "all" else any(hits))


def _percent(flags: Iterable[bool]) -> float:
    flags = list(flags)
    return 100.0 * sum(flags) / len(flags)


def scope_metrics(classification: Sequence[str], labels: Sequence[str], open_answers: Sequence[str],
                  open_labels: Sequence[str], vocabulary: Iterable[str], min_words: int = 4,
                  separator: str | None = None, grounded: str = "any") -> dict[str, float]:
    """The metrics of the module docstring. ``classification``/``labels``: classification answers and their
    reference names; ``open_answers``/``open_labels``: open answers and the category names of their regions.
    A kind with no answers leaves its metrics (and ``scope_adherence``) out rather than reporting 0."""
    vocab = vocabulary_set(vocabulary)
    out: dict[str, float] = {}
    if classification:
        out["label_rate"] = _percent(scope_label(a) in vocab for a in classification)
        out["accuracy"] = _percent(scope_label(a) == scope_label(name)
                                   for a, name in zip(classification, labels, strict=True))
    if open_answers:
        out["sentence_rate"] = _percent(is_sentence(a, vocab, min_words) for a in open_answers)
        out["grounded_rate"] = _percent(mentions(a, attribute_words(name, separator), grounded)
                                        for a, name in zip(open_answers, open_labels, strict=True))
    if classification and open_answers:
        out["scope_adherence"] = (out["label_rate"] + out["sentence_rate"]) / 2
    return out
