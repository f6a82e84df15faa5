"""Question files: POPE yes/no questions, spatial region QA (SpatialRGPT-Bench-like) and DLC-style detailed
region captions (formats in docs/benchmarks.md)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from regionvlm.data import formats
from regionvlm.data.datasets.base import RegionDataset
from regionvlm.data.structures import Regions
from regionvlm.errors import DataError
from regionvlm.registry import DATASETS


def pope_split(path: str) -> str:
    """A POPE file's split, named after the file: ``coco_pope_random.json`` → ``random``."""
    stem = Path(path).name.split(".")[0]
    return stem.split("_pope_")[-1] if "_pope_" in stem else stem


@DATASETS.register("pope")
class PopeDataset(RegionDataset):
    """POPE yes/no object-existence questions (JSON lines); one split per file."""

    task = "yes_no"
    default_prompt: ClassVar[dict | None] = {"type": "yes_no"}

    def __init__(self, path: str, image_root: str | None = None, **kw: Any):
        super().__init__(image_root, **kw)
        self.path, self.split = str(path), pope_split(str(path))
        self.items = self._limit(formats.read_pope(path))

    def __getitem__(self, i: int) -> dict:
        q = self.items[i]
        return {"id": f"pope-{self.split}-{q['question_id']}", "image": self.image_path(q["image"]),
                "regions": Regions(), "conversations": self.ask(i, question=q["text"], answer=q.get("label")),
                "target": {"question_id": q["question_id"], "split": self.split, "answer": q.get("label")},
                "task": self.task}


class _RegionQuestions(RegionDataset):
    """Base of the question files whose rows carry ``id``, ``image`` and ``regions`` (region dicts, pixels)."""

    required: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: str, image_root: str | None = None, **kw: Any):
        super().__init__(image_root, **kw)
        self.path = str(path)
        self.items = self._limit(formats.read_jsonl_with_ids(path, ("image", "regions", *self.required),
                                                             check=self.check_row))

    @staticmethod
    def check_row(row: dict, where: str) -> None:
        """The format's own field checks (beyond the required fields)."""

    def regions(self, row: dict) -> Regions:
        return Regions.from_dicts(row["regions"], out_of_bounds=self.out_of_bounds,
                                  where=f"{self.path}: id {row['id']}.regions")


def question_kind(info: Mapping) -> str:
    """A spatial question's kind from its ``qa_info``: ``quantitative``, ``choice`` (``*_choice``: answered
    with a region) or ``predicate`` (yes/no)."""
    if info.get("type") == "quantitative":
        return "quantitative"
    return "choice" if str(info.get("category", "")).endswith("_choice") else "predicate"


@DATASETS.register("spatial_qa")
class SpatialQADataset(_RegionQuestions):
    """Spatial questions about regions (SpatialRGPT-Bench-like jsonl); the prompt's scope follows the kind."""

    task = "spatial_qa"
    default_prompt: ClassVar[dict | None] = {"type": "spatial_qa"}
    required = ("question", "qa_info")

    @staticmethod
    def check_row(row: dict, where: str) -> None:
        info = row["qa_info"]
        if not isinstance(info, dict):
            raise DataError(f"{where}.qa_info: expected an object")
        kind = question_kind(info)
        if kind == "quantitative" and not isinstance(info.get("value"), (int, float)):
            raise DataError(f"{where}.qa_info.value: a quantitative question needs a number (metres)")
        if kind == "predicate" and info.get("label") not in ("yes", "no"):
            raise DataError(f"{where}.qa_info.label: expected 'yes' or 'no'")
        label = info.get("label")
        if kind == "choice" and not (isinstance(label, int) and 1 <= label <= len(row["regions"])):
            raise DataError(f"{where}.qa_info.label: expected a region number 1..{len(row['regions'])}")

    def __getitem__(self, i: int) -> dict:
        r = self.items[i]
        return {"id": f"spatial-{r['id']}", "image": self.image_path(r["image"]), "regions": self.regions(r),
                "conversations": self.ask(i, question=r["question"], kind=question_kind(r["qa_info"]),
                                          answer=r.get("answer")),
                "target": {"id": r["id"], "answer": r.get("answer"), "qa_info": r["qa_info"]}, "task": self.task}


@DATASETS.register("dlc")
class DLCDataset(_RegionQuestions):
    """Detailed region captions from a DLC-style jsonl; a row's optional ``caption`` is the answer."""

    task = "detailed_caption"
    default_prompt: ClassVar[dict | None] = {"type": "detailed_caption"}
    required = ("questions",)

    @staticmethod
    def check_row(row: dict, where: str) -> None:
        for j, q in enumerate(row["questions"]):
            if not isinstance(q, dict) or q.get("type") not in ("positive", "negative"):
                raise DataError(f"{where}.questions[{j}].type: expected 'positive' or 'negative'")
            if not q.get("choices") or not all(isinstance(c, dict) and "score" in c for c in q["choices"]):
                raise DataError(f"{where}.questions[{j}].choices: expected objects with 'text' and 'score'")

    def __getitem__(self, i: int) -> dict:
        r = self.items[i]
        return {"id": f"dlc-{r['id']}", "image": self.image_path(r["image"]), "regions": self.regions(r),
                "conversations": self.ask(i, region=1, answer=r.get("caption")),
                "target": {"id": r["id"], "class_name": r.get("class_name"), "answer": r.get("caption")},
                "task": self.task}
