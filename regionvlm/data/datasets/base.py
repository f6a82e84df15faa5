"""`RegionDataset`, the base of every registered dataset, and the helpers the families share."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch.utils.data import Dataset

from regionvlm.data.processing import image_under_root
from regionvlm.errors import ConfigError, DataError
from regionvlm.registry import PROMPTS, to_plain


class RegionDataset(Dataset):
    """Base: image paths, prompt building and a deterministic per-sample rng."""

    task = "generic"
    default_prompt: ClassVar[dict | None] = None

    def __init__(self, image_root: str | None = None, prompt: Any = None, train: bool = True, seed: int = 0,
                 max_samples: int | None = None, out_of_bounds: str = "clip"):
        self.image_root = Path(image_root) if image_root else None
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.max_samples = max_samples
        self.out_of_bounds = out_of_bounds
        node = to_plain(prompt) if prompt is not None else self.default_prompt
        self.prompt = PROMPTS.build(node, key_path="prompt", **self.prompt_runtime()) if node is not None else None
        self.prompt_node = dict(node) if isinstance(node, dict) else None

    def __init_subclass__(cls, **kw: Any) -> None:
        """Expose the base keyword arguments in each subclass's signature, so that the registry checks config
        keys against the full list (a typo is an error naming the key, not a TypeError or a silent drop)."""
        super().__init_subclass__(**kw)
        own = [p for p in inspect.signature(cls.__init__).parameters.values() if p.kind != p.VAR_KEYWORD]
        names = {p.name for p in own}
        base = [p.replace(kind=p.KEYWORD_ONLY) for p in inspect.signature(RegionDataset.__init__).parameters.values()
                if p.name not in names and p.name != "self"]
        own = [p.replace(kind=p.KEYWORD_ONLY) if p.kind == p.VAR_POSITIONAL else p for p in own]
        cls.__signature__ = inspect.Signature(own[1:] + base)

    def prompt_runtime(self) -> dict[str, Any]:
        """Values the dataset gives its prompt at build time (e.g. its category names)."""
        return {}

    def trained_prompt(self) -> dict | None:
        """The node of this dataset's prompt with what it gave the prompt written out (`TaskPrompt.card_node`)."""
        if self.prompt is None or self.prompt_node is None or "type" not in self.prompt_node:
            return None
        return self.prompt.card_node(self.prompt_node)

    def ask(self, index: int, rng: np.random.Generator | None = None, **fields: Any) -> list[dict]:
        """The conversation for item ``index``: ``self.prompt.build(**fields)`` with the item's rng (training:
        a sampled phrasing; evaluation: the first) or ``rng`` when the caller has drawn from it already. A
        prompt whose fields do not fit is a `ConfigError`."""
        try:
            return self.prompt.build(rng=rng if rng is not None else self.rng(index), **fields)
        except (KeyError, IndexError, TypeError) as e:
            filled = ", ".join(k for k in fields if k not in ("answer", "answer_index")) or "nothing"
            raise ConfigError(f"prompt: does not fit this dataset, which fills it with {filled} "
                              f"({type(e).__name__}: {e})") from None

    def set_epoch(self, epoch: int) -> None:
        """Re-draw prompt phrasings (and candidate order) each epoch."""
        self.epoch = epoch

    def rng(self, index: int) -> np.random.Generator | None:
        return np.random.default_rng([self.seed, self.epoch, index]) if self.train else None

    def image_path(self, file_name: str) -> str:
        """The image file under ``image_root``; a name leading out of it is a `DataError`."""
        if not self.image_root:
            return file_name
        return image_under_root(self.image_root, file_name, f"{type(self).__name__} (image_root {self.image_root})")

    def _limit(self, items: list) -> list:
        return items[: self.max_samples] if self.max_samples else items

    def __len__(self) -> int:
        return len(self.items)


def check_region_kind(region: str) -> str:
    """``region`` option of the annotation-based datasets: ``mask`` (the segmentation) or ``box`` (bbox only)."""
    if region not in ("mask", "box"):
        raise DataError(f"region: expected 'mask' or 'box', got {region!r}")
    return region


def ann_region(ann: dict, use: str = "mask") -> tuple[str, Any]:
    """A COCO-style annotation (or detection) as one `Regions` item: its segmentation, or its xywh bbox as a
    box when ``use == "box"`` or it has no segmentation."""
    seg = ann.get("segmentation")
    if use == "box" or not seg:
        x, y, w, h = ann["bbox"]
        return ("box", [x, y, x + w, y + h])
    return ("polygon" if isinstance(seg, list) else "rle", seg)


def check_regions_per_sample(value: Any) -> int | None:
    """``regions_per_sample``: 1 (one sample per region), N (an image's regions in groups of at most N) or
    ``all`` (returned as None: one sample per image)."""
    if value == "all":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"regions_per_sample: expected 1, a larger integer or 'all', got {value!r}")
    return value


def group_by_image(items: list, image_of, per_sample: int | None) -> list:
    """``items`` (in their fixed order) as lists of at most ``per_sample`` items of one image (None: all of
    them), groups in the order of their first item: a fixed, seed-independent grouping."""
    by_image: dict[Any, list] = {}
    for item in items:
        by_image.setdefault(image_of(item), []).append(item)
    groups = []
    for members in by_image.values():
        step = per_sample or len(members)
        groups += [members[k: k + step] for k in range(0, len(members), step)]
    return groups


def grouped_sample(turns: list[list[dict]], rng: np.random.Generator | None) -> dict:
    """``turns`` (one conversation per region, each opening with ``<image>``) as one grouped sample's
    ``turns`` (shuffled with ``rng`` when training; the collator joins them around one image prefix, each turn
    attending only to that prefix and itself) and ``conversations`` (the same turns as one multi-turn
    conversation, ``<image>`` in the first only: what a reader or a generation prompt sees)."""
    order = rng.permutation(len(turns)) if rng is not None else np.arange(len(turns))
    turns = [turns[k] for k in order]
    conversation = [dict(t) for conv in turns for t in conv]
    for k, t in enumerate(conversation):
        if k > 0 and isinstance(t.get("value"), str):
            t["value"] = t["value"].replace("<image>\n", "").replace("<image>", "")
    return {"turns": turns, "conversations": conversation}

