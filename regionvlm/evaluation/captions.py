"""Caption scores as pycocoevalcap computes them.

Reference: pycocoevalcap ``PTBTokenizer`` → ``Bleu(4)``, ``Meteor()``, ``Rouge()``, ``Cider()`` (``Spice()`` when its
Stanford CoreNLP jars are present); each scorer's ``compute_score`` is called directly. Percentages are ×100, as
papers print them.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def spice_unavailable_reason() -> str | None:
    """None when SPICE can run offline, else one line saying why it is skipped."""
    try:
        import pycocoevalcap.spice as spice_pkg
    except ImportError:
        return "pycocoevalcap.spice is not importable"
    lib = Path(spice_pkg.__path__[0]) / "lib"
    missing = [j for j in SPICE_JARS if not (lib / j).exists()]
    if missing:
        return f"Stanford CoreNLP jars not present in {lib} ({', '.join(missing)}); run pycocoevalcap's " \
               f"spice/get_stanford_models.py on a machine with network access"
    return None


def ptb_tokenize(captions: Mapping[Any, Sequence[str]]) -> dict[Any, list[str]]:
    """pycocoevalcap's ``PTBTokenizer`` (Java) on ``{id: [caption, ...]}``.

    The reference drops trailing empty captions (it ``rstrip``s the joined text before piping it to Java),
    which would lose ids; those get an empty tokenised caption instead, never a crash."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    data = {k: [{"caption": c} for c in v] for k, v in captions.items()}
    out = PTBTokenizer().tokenize(data)
    for k, v in captions.items():
        got = out.setdefault(k, [])
        got.extend([""] * (len(v) - len(got)))
    return out


_METEOR = None


def shared_meteor():
    """One pycocoevalcap ``Meteor()`` per process: its JVM loads a paraphrase table for seconds at start-up,
    and the scorer is stateless between ``compute_score`` calls (it holds a lock for thread safety)."""
    global _METEOR
    if _METEOR is None:
        from pycocoevalcap.meteor.meteor import Meteor

        _METEOR = Meteor()
    return _METEOR


def caption_metrics(references: Mapping[Any, Sequence[str]], hypotheses: Mapping[Any, str],
                    spice: bool | str = "auto") -> tuple[dict[str, float], list[str]]:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr (and SPICE) ×100 on ``{id: [refs]}`` / ``{id: hypothesis}``.

    Both sides are PTB-tokenised, then each scorer's ``compute_score`` is called directly (``COCOEvalCap``
    always builds SPICE). CIDEr's document frequencies come from the references of exactly these ids.
    ``spice``: True (error if unavailable), False, or "auto" (run when the jars are present). Returns
    ``(metrics, notes)``; a note says why SPICE was skipped."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if set(references) != set(hypotheses):
        raise ValueError("caption_metrics: references and hypotheses must have the same ids")
    if not hypotheses:
        return {}, ["no captions to score"]
    # Item order must be fixed: METEOR/BLEU corpus statistics are order independent, but keep it stable.
    keys = sorted(hypotheses, key=str)
    gts = ptb_tokenize({k: list(references[k]) for k in keys})
    res = ptb_tokenize({k: [hypotheses[k]] for k in keys})
    out: dict[str, float] = {}
    notes: list[str] = []
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its statistics; --json owns stdout
        bleu, _ = Bleu(4).compute_score(gts, res)
        for n, b in enumerate(bleu, 1):
            out[f"BLEU-{n}"] = 100.0 * b
        out["METEOR"] = 100.0 * shared_meteor().compute_score(gts, res)[0]
        out["ROUGE-L"] = 100.0 * Rouge().compute_score(gts, res)[0]
        out["CIDEr"] = 100.0 * Cider().compute_score(gts, res)[0]
        reason = spice_unavailable_reason() if spice else "disabled"
        if spice and reason is None:
            from pycocoevalcap.spice.spice import Spice

            out["SPICE"] = 100.0 * Spice().compute_score(gts, res)[0]
        elif spice is True:
            raise RuntimeError(f"SPICE requested but unavailable: {reason}")
        else:
            notes.append(f"SPICE skipped: {reason}")
    return out, notes
