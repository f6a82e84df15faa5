"""Conversation files: LLaVA image conversations and the general region-conversation jsonl."""

from __future__ import annotations

from typing import Any

from regionvlm.data import formats
from regionvlm.data.datasets.base import RegionDataset
from regionvlm.data.structures import Regions
from regionvlm.errors import DataError
from regionvlm.registry import DATASETS


@DATASETS.register("llava")
class LlavaDataset(RegionDataset):
    """LLaVA-format image conversations (Pretrain 558K, Instruct 665K); rows without ``image`` are text-only."""

    task = "conversation"

    def __init__(self, path: str, image_root: str | None = None, **kw: Any):
        super().__init__(image_root, **kw)
        self.path = str(path)
        self.items = self._limit(self._read(path))

    @staticmethod
    def _read(path):
        return formats.read_llava(path)

    def _regions(self, row: dict, where: str) -> Regions:
        return Regions()

    def __getitem__(self, i: int) -> dict:
        row = self.items[i]
        where = f"{self.path}: {row.get('id', i)}"
        image = self.image_path(row["image"]) if row.get("image") else None
        conv = [dict(t) for t in row["conversations"]]
        has_tag = any("<image>" in t["value"] for t in conv)
        if image is not None and not has_tag:  # LLaVA rows always carry the tag; be lenient for others
            conv[0] = {**conv[0], "value": "<image>\n" + conv[0]["value"]}
        if image is None and has_tag:
            raise DataError(f"{where}: conversation has <image> but the row has no image")
        return {"id": str(row.get("id", i)), "image": image, "regions": self._regions(row, where),
                "conversations": conv, "target": row.get("target"), "task": row.get("task", self.task)}


@DATASETS.register("conversations")
class ConversationsDataset(LlavaDataset):
    """Region conversations jsonl (the general format and datagen's output): regions + multi-turn dialogue."""

    task = "region_conversation"

    @staticmethod
    def _read(path):
        return formats.read_conversations_jsonl(path)

    def _regions(self, row: dict, where: str) -> Regions:
        size = (row["height"], row["width"]) if "height" in row and "width" in row else None
        return Regions.from_dicts(row.get("regions", []), size, out_of_bounds=self.out_of_bounds,
                                  where=f"{where}.regions")
