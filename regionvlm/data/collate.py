"""The `Collator`: processed samples → `Batch` (the only place that knows about tokens).
(Over 300 lines: tokenising, turn joining and packing are one pipeline over the same pieces.)

How a sample becomes tokens: the conversation is rendered by its chat template (`regionvlm.text.templates`) into
*pieces* — text, answer text
(the spans that carry labels), and the end-of-answer token — then every piece's text is split at the ``<image>``
and ``<regionK>`` tags. All text fragments of the whole batch are tokenised in one call of the fast (Rust)
tokenizer; the placeholder ids are spliced in between as runs of ``IMAGE_TOKEN`` / ``REGION_TOKEN``. Tags are
never tokenised as text, so a placeholder count is exact by construction, and labels come from piece
boundaries rather than from re-tokenising prefixes (LLaVA's ``-2`` offsets). Generation prompts are rendered by
the same code, so training and inference tokenise the prompt identically.

This runs in DataLoader workers (tokenisation is CPU work that must not sit in the training step).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from regionvlm.batch import Batch
from regionvlm.errors import ConfigError, DataError
from regionvlm.text.templates import EOS, ROLES, TAG, check_template, render
from regionvlm.tokens import IGNORE_INDEX, add_placeholder_tokens

log = logging.getLogger(__name__)

# -- the collator ---------------------------------------------------------------------------------------------
class Collator:
    """Processed samples → `Batch`.

    A sample is a dict with ``conversations`` and, once processed, ``pixel_values`` (3×S×S), ``region_masks``
    (R×S×S) and ``region_boxes`` (R×4); raw samples (``image``, ``regions``) are processed first if a
    ``processor`` is given. ``<image>`` expands to ``num_image_tokens`` placeholders and ``<regionK>`` to
    ``tokens_per_region`` placeholders plus one entry in ``region_mentions``.

    Truncation to ``max_length`` cuts the end of the sequence, but never a placeholder: a sample whose last
    placeholder would be cut (or, in training, that would keep no answer token, or, in generation, whose
    prompt is too long) is dropped and counted in ``num_dropped`` — per process, so with workers each worker
    keeps its own count; drops are also logged. If every sample of a batch is dropped the result is an
    *empty* `Batch` (``len(batch) == 0``, zero-size tensors with the usual trailing shapes); the training
    step should skip it (return None).

    A grouped sample (a dataset's ``regions_per_sample``) carries ``turns``: independent one-region
    conversations joined into one sequence around one shared image prefix (`_join_turns`); ``pack=True`` puts
    several samples in one row (`_rows`). Both set ``position_ids``/``segment_ids``/``turn_ids`` on the `Batch`,
    from which the model builds attention that keeps every sample and turn to itself.

    ``for_generation=True``: the prompt up to and including the assistant cue only, left padding,
    ``labels=None``, ``targets`` = the sample's ``target`` or else its last answer.
    """

    def __init__(self, tokenizer, num_image_tokens: int, tokens_per_region: int = 1, template: str = "vicuna_v1",
                 max_length: int | None = 2048, padding_side: str = "right", for_generation: bool = False,
                 processor=None, pack: bool = False):
        check_template(template)
        if padding_side not in ("left", "right"):
            raise ConfigError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
        self.tokenizer = tokenizer
        self.num_image_tokens = int(num_image_tokens)
        self.tokens_per_region = int(tokens_per_region)
        self.template = template
        self.max_length = max_length
        self.for_generation = for_generation
        self.padding_side = "left" if for_generation else padding_side
        self.processor = processor
        self.image_token_id, self.region_token_id = add_placeholder_tokens(tokenizer)
        self.eos_token_id = tokenizer.eos_token_id
        if self.eos_token_id is None:
            raise ConfigError("tokenizer: has no eos token; answers need an end token")
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_id
        bos = tokenizer.bos_token_id
        self.bos = [bos] if bos is not None and template != "chat_template" else []  # chat templates write their own
        self.num_dropped = 0
        if pack and for_generation:
            raise ConfigError("pack: packing is for training batches, not generation")
        self.pack = bool(pack)

    # -- rendering ------------------------------------------------------------------------------------------
    def render(self, conversations, where="sample"):
        return render(self.template, self.tokenizer, conversations, self.for_generation, where)

    def prompt_text(self, conversations) -> str:
        """The rendered text (tags unexpanded), for display and debugging."""
        eos = self.tokenizer.eos_token or ""
        return "".join(eos if t is EOS else t for t, _ in self.render(conversations))

    # -- tokenisation ---------------------------------------------------------------------------------------
    def _conversations(self, s: dict) -> list:
        """The conversations a sample is encoded from: its independent ``turns`` (a grouped training sample, see
        `_join_turns`) or its one ``conversations``."""
        turns = s.get("turns")
        return list(turns) if turns and not self.for_generation else [s["conversations"]]

    def _encode(self, samples: list[dict]) -> list[dict | None]:
        """Per sample (None when dropped): ``ids``, ``labels``, ``mentions`` (region indices, token order) and, for
        grouped samples, ``positions`` and ``turns`` (see `_join_turns`)."""
        plans, texts, owners = [], [], []
        for si, s in enumerate(samples):
            where = f"sample {s.get('id', '?')}"
            for conv in self._conversations(s):
                plan = []  # ("text", index into texts, is_answer) | ("image",) | ("region", k) | ("eos", is_answer)
                for text, is_answer in self.render(conv, where):
                    if text is EOS:
                        plan.append(("eos", is_answer))
                        continue
                    for frag in TAG.split(text):
                        if not frag:
                            continue
                        if frag == "<image>":
                            plan.append(("image",))
                        elif frag.startswith("<region") and TAG.fullmatch(frag):
                            plan.append(("region", int(frag[7:-1])))
                        else:
                            plan.append(("text", len(texts), is_answer))
                            texts.append(frag)
                plans.append(plan)
                owners.append(si)
        token_lists = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        encoded: list[list[dict]] = [[] for _ in samples]
        for si, plan in zip(owners, plans):
            s = samples[si]
            encoded[si].append(self._encode_plan(plan, token_lists, len(s["region_masks"]),
                                                 f"sample {s.get('id', '?')}"))
        out = []
        for s, parts in zip(samples, encoded):
            where = f"sample {s.get('id', '?')}"
            if len(parts) == 1:
                e = parts[0]
                cut = self._truncate(e["ids"], e["labels"], e["mentions"], e["last_placeholder_end"], where)
                out.append(None if cut is None else dict(zip(("ids", "labels", "mentions"), cut)))
            else:
                out.append(self._join_turns(parts, where))
        return out

    def _encode_plan(self, plan: list, token_lists: list, num_regions: int, where: str) -> dict:
        ids, labels, mentions, n_images = [np.asarray(self.bos, dtype=np.int64)], [], [], 0
        labels.append(np.full(len(self.bos), IGNORE_INDEX, dtype=np.int64))
        length, last_placeholder_end, image_end = len(self.bos), 0, None
        for step in plan:
            kind = step[0]
            if kind == "text":
                tok = np.asarray(token_lists[step[1]], dtype=np.int64)
                lab = tok if step[2] else np.full(len(tok), IGNORE_INDEX, dtype=np.int64)
            elif kind == "eos":
                tok = np.asarray([self.eos_token_id], dtype=np.int64)
                lab = tok if step[1] else np.full(1, IGNORE_INDEX, dtype=np.int64)
            else:
                if kind == "image":
                    n_images += 1
                    if n_images > 1:
                        raise DataError(f"{where}: more than one <image> tag")
                    tok = np.full(self.num_image_tokens, self.image_token_id, dtype=np.int64)
                    image_end = length + len(tok)
                else:
                    k = step[1]
                    if not 1 <= k <= num_regions:
                        raise DataError(f"{where}: <region{k}> but the sample has {num_regions} regions")
                    mentions.append(k - 1)
                    tok = np.full(self.tokens_per_region, self.region_token_id, dtype=np.int64)
                lab = np.full(len(tok), IGNORE_INDEX, dtype=np.int64)
                last_placeholder_end = length + len(tok)
            ids.append(tok)
            labels.append(lab)
            length += len(tok)
        return {"ids": np.concatenate(ids), "labels": np.concatenate(labels), "mentions": mentions,
                "last_placeholder_end": last_placeholder_end, "image_end": image_end}

    def _join_turns(self, parts: list[dict], where: str) -> dict | None:
        """One sequence from a grouped sample's independent turns (each a whole conversation about one region,
        all starting with the same text and ``<image>``): the shared prefix (up to the image placeholders) once,
        then each turn's own tokens. ``turns`` marks the prefix 0 and turn k's tokens k, ``positions`` continue
        the prefix in every turn, so with the model's structured attention each turn computes exactly what it
        would as a sample of its own, while the image is encoded and its tokens carried once.

        Truncation drops whole turns from the end (never a placeholder); a first turn that does not fit alone
        is truncated or dropped as a single sample is."""
        prefix = parts[0]["image_end"]
        if prefix is None or any(p["image_end"] != prefix or not np.array_equal(p["ids"][:prefix],
                                                                                parts[0]["ids"][:prefix])
                                 for p in parts):
            raise DataError(f"{where}: grouped turns must all start with the same text and <image>")
        first = parts[0]
        kept = [first]
        total = len(first["ids"])
        for p in parts[1:]:
            if self.max_length is not None and total + len(p["ids"]) - prefix > self.max_length:
                break
            kept.append(p)
            total += len(p["ids"]) - prefix
        if len(kept) == 1:
            cut = self._truncate(first["ids"], first["labels"], first["mentions"], first["last_placeholder_end"],
                                 where)
            if cut is None:
                return None
            ids = cut[0]
            return {"ids": ids, "labels": cut[1], "mentions": cut[2], "positions": np.arange(len(ids)),
                    "turns": np.where(np.arange(len(ids)) < prefix, 0, 1)}
        ids = [first["ids"]] + [p["ids"][prefix:] for p in kept[1:]]
        labels = [first["labels"]] + [p["labels"][prefix:] for p in kept[1:]]
        positions = [np.arange(len(first["ids"]))] + [np.arange(prefix, len(p["ids"])) for p in kept[1:]]
        turns = [np.where(np.arange(len(first["ids"])) < prefix, 0, 1)] + [
            np.full(len(p["ids"]) - prefix, k + 1) for k, p in enumerate(kept[1:], start=1)]
        return {"ids": np.concatenate(ids), "labels": np.concatenate(labels),
                "mentions": [m for p in kept for m in p["mentions"]], "positions": np.concatenate(positions),
                "turns": np.concatenate(turns)}

    def _truncate(self, ids, labels, mentions, last_placeholder_end, where):
        if self.max_length is None or len(ids) <= self.max_length:
            return ids, labels, mentions
        reason = None
        if self.for_generation:
            reason = f"prompt of {len(ids)} tokens exceeds max_length={self.max_length}"
        elif last_placeholder_end > self.max_length:
            reason = f"truncation to {self.max_length} tokens would cut a placeholder (ends at {last_placeholder_end})"
        elif not (labels[: self.max_length] != IGNORE_INDEX).any():
            reason = f"no answer token left after truncation to {self.max_length} tokens"
        if reason:
            self.num_dropped += 1
            if self.num_dropped <= 5 or self.num_dropped % 100 == 0:  # loud at first, then throttled
                log.warning("dropped %s: %s (dropped so far in this process: %d)", where, reason,
                            self.num_dropped)
            return None
        return ids[: self.max_length], labels[: self.max_length], mentions

    # -- batch ----------------------------------------------------------------------------------------------
    def _rows(self, kept: list[tuple[dict, dict]]) -> list[list[int]]:
        """Which kept samples share a row: one each, or (``pack``) first-fit by decreasing length into rows of
        at most ``max_length`` tokens (the longest sample when there is no limit)."""
        if not self.pack:
            return [[i] for i in range(len(kept))]
        lengths = [len(e["ids"]) for _, e in kept]
        capacity = self.max_length or max(lengths, default=0)
        rows: list[list[int]] = []
        room: list[int] = []
        for i in sorted(range(len(kept)), key=lambda i: (-lengths[i], i)):
            r = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
            if r is None:
                rows.append([i])
                room.append(capacity - lengths[i])
            else:
                rows[r].append(i)
                room[r] -= lengths[i]
        return [sorted(r) for r in rows]

    def __call__(self, samples: list[dict]) -> Batch:
        if self.processor is not None:
            samples = [s if "pixel_values" in s else self.processor.process_sample(s) for s in samples]
        for s in samples:
            if "pixel_values" not in s:
                raise DataError(f"sample {s.get('id', '?')}: not processed (no pixel_values); "
                                "give the Collator a processor")
        encoded = self._encode(samples)
        kept = [(s, e) for s, e in zip(samples, encoded) if e is not None]
        rows = self._rows(kept)
        order = [i for r in rows for i in r]  # images, regions and ids in row-major token order
        structured = self.pack or any("turns" in e for _, e in kept)
        ref = samples[0]["pixel_values"] if samples else torch.zeros(3, 1, 1)
        B = len(rows)
        L = max((sum(len(kept[i][1]["ids"]) for i in r) for r in rows), default=0)
        input_ids = np.full((B, L), self.pad_token_id, dtype=np.int64)
        labels = np.full((B, L), IGNORE_INDEX, dtype=np.int64)
        attention = np.zeros((B, L), dtype=np.int64)
        positions = np.zeros((B, L), dtype=np.int64)
        segments = np.full((B, L), -1, dtype=np.int64)
        turn_ids = np.zeros((B, L), dtype=np.int64)
        mentions, image_index, image_row, offset = [], [], [], 0
        image = 0
        for b, r in enumerate(rows):
            n_row = sum(len(kept[i][1]["ids"]) for i in r)
            start = L - n_row if self.padding_side == "left" else 0
            for seg, i in enumerate(r):
                s, e = kept[i]
                n = len(e["ids"])
                sl = slice(start, start + n)
                input_ids[b, sl], labels[b, sl], attention[b, sl] = e["ids"], e["labels"], 1
                positions[b, sl] = e.get("positions", np.arange(n))
                segments[b, sl] = seg
                if "turns" in e:
                    turn_ids[b, sl] = e["turns"]
                start += n
                R = len(s["region_masks"])
                mentions.extend(offset + k for k in e["mentions"])
                image_index.extend([image] * R)
                image_row.append(b if (e["ids"] == self.image_token_id).any() else -1)
                offset += R
                image += 1
        S = ref.shape[-2:]
        kept_s = [kept[i][0] for i in order]
        return Batch(
            input_ids=torch.from_numpy(input_ids),
            attention_mask=torch.from_numpy(attention),
            pixel_values=torch.stack([s["pixel_values"] for s in kept_s]) if kept_s else ref.new_zeros(0, 3, *S),
            region_masks=(torch.cat([s["region_masks"] for s in kept_s]) if kept_s
                          else torch.zeros(0, *S, dtype=torch.bool)),
            region_boxes=torch.cat([s["region_boxes"] for s in kept_s]) if kept_s else ref.new_zeros(0, 4),
            region_image_index=torch.tensor(image_index, dtype=torch.long),
            region_mentions=torch.tensor(mentions, dtype=torch.long),
            labels=None if self.for_generation else torch.from_numpy(labels),
            ids=[str(s.get("id", "")) for s in kept_s],
            targets=[self._target(s) for s in kept_s],
            position_ids=torch.from_numpy(positions) if structured else None,
            segment_ids=torch.from_numpy(segments) if self.pack else None,
            turn_ids=torch.from_numpy(turn_ids) if any("turns" in e for _, e in kept) else None,
            image_row_index=torch.tensor(image_row, dtype=torch.long) if self.pack else None,
        )

    def _target(self, s: dict) -> Any:
        if "target" in s or not self.for_generation:
            return s.get("target")
        answers = [t.get("value") for t in s["conversations"] if ROLES.get(t.get("from")) == "assistant"]
        return answers[-1] if answers else None
