"""Cheap token-length estimates of training samples, for length-grouped batching (``data.group_by_length``).

A sample's length is estimated once per epoch (the prompt phrasing is drawn per epoch) from its raw dataset item
— the conversation and the region tags, no image decoded, no mask rasterised — as the collator would lay it out:
the template's text (rendered by the collator's own template, ``<image>``/``<regionK>`` tags taken out) in
characters divided by the tokenizer's characters per token, plus the placeholders the tags expand to, the BOS
and one EOS per answer. Characters per token are measured once per run, by tokenising the texts of a few hundred
samples spread over the mixture. Grouped samples count their shared prefix once, as the collator joins them. The
estimate only has to rank samples; tokenisation details move it by a few tokens. Reading an item without its
image costs a small part of what the loader pays for the same item every epoch (image decoding, mask
rasterisation).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from regionvlm.data.collate import Collator
from regionvlm.text.templates import EOS, TAG

log = logging.getLogger(__name__)

CALIBRATION_SAMPLES = 256


class TextCounts:
    """Raw samples → rows ``(characters of text, image tags, region tags, EOS pieces)``; a DataLoader
    ``collate_fn`` (picklable, so the counting runs in the loader's workers)."""

    def __init__(self, collator: Collator, keep_text: bool = False):
        self.collator, self.keep_text = collator, keep_text

    def texts(self, sample: dict) -> tuple[list[str], int, int, int]:
        """The sample's text fragments (tags taken out) and its counts of image tags, region tags, EOS pieces.
        A grouped sample's turns after the first count from their ``<image>`` on: the collator keeps the
        shared prefix once (`Collator._join_turns`)."""
        frags, images, regions, eos = [], 0, 0, 0
        where = f"sample {sample.get('id', '?')}"
        for k, conv in enumerate(sample.get("turns") or [sample["conversations"]]):
            counting = k == 0
            for text, _ in self.collator.render(conv, where):
                if text is EOS:
                    eos += counting
                    continue
                for frag in TAG.split(text):
                    if frag == "<image>":
                        images += k == 0
                        counting = True
                    elif not counting:
                        continue
                    elif TAG.fullmatch(frag):
                        regions += 1
                    elif frag:
                        frags.append(frag)
        return frags, images, regions, eos

    def __call__(self, samples: list[dict]) -> list:
        out = []
        for s in samples:
            frags, images, regions, eos = self.texts(s)
            out.append((frags if self.keep_text else sum(map(len, frags)), images, regions, eos))
        return out


def chars_per_token(collator: Collator, data: Dataset) -> float:
    """Characters per token of ``collator``'s tokenizer on the texts of up to `CALIBRATION_SAMPLES` samples of
    ``data``, spread evenly over it (a fixed choice: every rank of a run measures the same)."""
    counts = TextCounts(collator, keep_text=True)
    picks = np.unique(np.linspace(0, len(data) - 1, num=min(CALIBRATION_SAMPLES, len(data))).astype(int))
    frags = [f for i in picks for f in counts([data[int(i)]])[0][0]]
    if not frags:
        return 4.0  # no text at all: any positive ratio ranks the samples the same
    tokens = sum(len(t) for t in collator.tokenizer(frags, add_special_tokens=False)["input_ids"])
    return sum(map(len, frags)) / max(tokens, 1)


def estimate_lengths(datasets: Sequence[Dataset], collator: Collator, num_workers: int = 0, chunk: int = 512,
                     ratio: float | None = None) -> np.ndarray:
    """Estimated token length of every sample of ``datasets`` (raw, unprocessed datasets, at their current
    epoch's prompt phrasing), indexed as their `ConcatDataset`, capped at the collator's ``max_length``. Reads
    each item once, in ``num_workers`` loader workers. ``ratio``: characters per token (default: measured,
    `chars_per_token`)."""
    start = time.perf_counter()
    data = ConcatDataset(list(datasets))
    ratio = ratio or chars_per_token(collator, data)
    loader = DataLoader(data, batch_size=chunk, shuffle=False, num_workers=num_workers,
                        collate_fn=TextCounts(collator))
    rows = np.asarray([r for part in loader for r in part], dtype=np.float64).reshape(-1, 4)
    chars, images, regions, eos = rows.T
    lengths = (np.ceil(chars / ratio) + images * collator.num_image_tokens + regions * collator.tokens_per_region
               + eos + len(collator.bos)).astype(np.int64)
    if collator.max_length is not None:
        lengths = np.minimum(lengths, collator.max_length)
    log.info("estimated the token lengths of %d samples in %.1f s (%.2f characters per token): median %d, "
             "max %d", len(lengths), time.perf_counter() - start, ratio,
             int(np.median(lengths)) if len(lengths) else 0, int(lengths.max(initial=0)))
    return lengths
