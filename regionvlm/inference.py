"""Ask a trained region model about regions of your images, from Python.

    from regionvlm import RegionChat
    chat = RegionChat.from_pretrained("runs/rgpt-tiny-stage2/export")     # offline, from the folder alone
    chat.ask("photo.jpg", regions=[[10, 20, 120, 200]], prompt="What is <region1>?")
    chat.classify("photo.jpg", [[10, 20, 120, 200]])                     # task-guided prompts
    chat.caption("photo.jpg", [mask], detailed=True)
    chat.refer("photo.jpg", "the red circle", candidates=[box1, box2])    # → index of the chosen candidate

Regions may be xyxy boxes (4 numbers), binary masks (H×W arrays), polygons (``[[x1, y1, x2, y2, ...], ...]``)
or COCO RLE dicts (``{"size": [h, w], "counts": ...}``); images may be paths, PIL images or H×W×3 arrays.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from regionvlm.data.structures import Regions
from regionvlm.errors import DataError

REGION_KINDS = ("box", "mask", "polygon", "rle")


def as_region_item(region: Any, where: str = "region") -> tuple[str, Any]:
    """One user region → a ``(kind, data)`` item of `Regions`, inferring the kind from its form."""
    if isinstance(region, dict):
        if "size" in region and "counts" in region:
            return "rle", region
        raise DataError(f"{where}: a dict region must be COCO RLE with 'size' and 'counts'")
    arr = region if isinstance(region, np.ndarray) else None
    if arr is None and hasattr(region, "numpy"):  # torch tensors
        arr = region.detach().cpu().numpy()
    if arr is not None and arr.ndim == 2:
        return "mask", arr.astype(bool)
    if isinstance(region, (list, tuple)) and region and all(isinstance(p, (list, tuple, np.ndarray)) for p in region):
        return "polygon", [list(map(float, p)) for p in region]
    flat = np.asarray(region, dtype=np.float64).reshape(-1)
    if flat.size == 4:
        return "box", flat
    raise DataError(f"{where}: expected an xyxy box (4 numbers), an H×W mask, polygons or COCO RLE")


def as_regions(regions: Iterable[Any] | Regions | None) -> Regions:
    if isinstance(regions, Regions):
        return regions
    return Regions([as_region_item(r, f"regions[{i}]") for i, r in enumerate(regions or [])])


class RegionChat:
    """A loaded model with its tokenizer, image processor and chat template: text in, text out."""

    def __init__(self, model: Any, tokenizer: Any, card: dict, device: str | None = None):
        import torch

        from regionvlm.hub import as_model_card

        self.model, self.tokenizer, self.card = model.eval(), tokenizer, as_model_card(card, model)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.collator, self.processor = generation_collator(model, tokenizer, self.card, process=True)
        self.generation = dict(self.card.get("generation") or {})

    @classmethod
    def from_pretrained(cls, export_dir: str | os.PathLike, device: str | None = None) -> RegionChat:
        """Model, tokenizer, processing, chat template and task prompts, all read from the export folder."""
        from regionvlm.hub import load_export

        model, tokenizer, card = load_export(export_dir)
        return cls(model, tokenizer, card, device=device)

    # -- asking -------------------------------------------------------------------------------------------
    def sample(self, image: Any, regions: Any = None, prompt: str = "", sample_id: str = "0") -> dict:
        """The raw sample for one question (``<image>`` is prepended unless the prompt places it)."""
        value = prompt if "<image>" in prompt else f"<image>\n{prompt}"
        return {"id": sample_id, "image": image, "regions": as_regions(regions),
                "conversations": [{"from": "human", "value": value}]}

    def generate(self, samples: Sequence[dict], **generation: Any) -> list[str]:
        """Answers for raw samples, batched (one forward of the vision tower, one generate call)."""
        import torch

        from regionvlm.engine.module import GENERATION_KEYS

        batch = self.collator(list(samples))
        if len(batch) != len(samples):
            raise DataError(f"{len(samples) - len(batch)} prompt(s) do not fit the model's context "
                            f"(max_length={self.collator.max_length})")
        settings = {k: v for k, v in {**self.generation, **generation}.items() if k in GENERATION_KEYS}
        with torch.inference_mode():
            ids = self.model.generate(batch.to(self.device), **settings)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def ask(self, image: Any, regions: Any = None, prompt: str = "", **generation: Any) -> str:
        """The model's answer to ``prompt`` about ``regions`` (``<regionK>`` names regions[K-1])."""
        return self.generate([self.sample(image, regions, prompt)], **generation)[0]

    def ask_batch(self, items: Iterable[dict], batch_size: int = 8, **generation: Any) -> list[str]:
        """Many ``{"image", "regions", "prompt"}`` items, answered ``batch_size`` at a time."""
        samples = [self.sample(it["image"], it.get("regions"), it["prompt"], str(i)) for i, it in enumerate(items)]
        out: list[str] = []
        for start in range(0, len(samples), batch_size):
            out += self.generate(samples[start:start + batch_size], **generation)
        return out

    # -- task shortcuts (the registered task-guided prompts, evaluation phrasing) --------------------------
    def task_question(self, prompt_type: str, **fields: Any) -> str:
        """The evaluation phrasing of a registered prompt, configured as the model was trained with it (the
        card's ``prompts:``: same vocabulary and guidance), else with the prompt's defaults."""
        from regionvlm.registry import PROMPTS

        node = self.card["prompts"].get(prompt_type) or {"type": prompt_type}
        return PROMPTS.build(node, key_path=f"prompts.{prompt_type}").build(**fields)[0]["value"]

    def _per_region(self, image: Any, regions: Any, question: str, **generation: Any) -> list[str]:
        items = [{"image": image, "regions": Regions([r]), "prompt": question} for r in as_regions(regions).items]
        return self.ask_batch(items, **generation)

    def classify(self, image: Any, regions: Any, **generation: Any) -> list[str]:
        """The class name of each region, one question per region."""
        return self._per_region(image, regions, self.task_question("region_classification"), **generation)

    def caption(self, image: Any, regions: Any, detailed: bool = False, **generation: Any) -> list[str]:
        """A brief (or detailed) caption of each region."""
        question = self.task_question("detailed_caption" if detailed else "brief_caption")
        return self._per_region(image, regions, question, **generation)

    def refer(self, image: Any, expression: str, candidates: Any, **generation: Any) -> int | None:
        """Index (0-based) of the candidate region the expression refers to, or None if the answer names none."""
        candidates = as_regions(candidates)
        question = self.task_question("rec", expression=expression, num_candidates=len(candidates))
        from regionvlm.evaluation.answers import parse_region_index

        return parse_region_index(self.ask(image, candidates, question, **generation), len(candidates))


def generation_collator(model: Any, tokenizer: Any, card: dict, process: bool = False) -> tuple[Any, Any]:
    """``(collator, processor)``: a generation-mode `Collator` that renders prompts as the model was trained
    (chat template, context length, image processing: the model card's ``text:`` and ``processor:``; a training
    config is turned into its card). ``process=True``: it also decodes and processes raw samples; otherwise
    samples arrive processed."""
    from regionvlm.data.collate import Collator
    from regionvlm.data.processing import ImageProcessor
    from regionvlm.hub import as_model_card

    card = as_model_card(card, model)
    processor = ImageProcessor(**card["processor"])
    return Collator(tokenizer, model.num_image_tokens, model.tokens_per_region, template=card["text"]["template"],
                    max_length=card["text"]["max_length"], for_generation=True,
                    processor=processor if process else None), processor
