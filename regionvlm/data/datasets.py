"""Registered datasets: official annotation files → raw samples (see docs/architecture.md).

Each dataset reads its files once in ``__init__`` (parsing and indexing only) and builds a sample in
``__getitem__``: the image stays a path and segmentations stay as annotated, so decoding happens in DataLoader
workers (`ImageProcessor`), never in the main process. ``image_root`` is per dataset (write
``${oc.env:REGIONVLM_DATA,data}/coco/train2017`` in YAML). Prompts are `PROMPTS` nodes; training samples a
phrasing with a per-(seed, epoch, index) rng, evaluation (``train: false``) uses the first phrasing.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch.utils.data import Dataset

from regionvlm.data import formats
from regionvlm.data.geometry import box_iou_xywh
from regionvlm.data.structures import Regions
from regionvlm.errors import DataError
from regionvlm.plugins.prompts import ReferringExpressionPrompt
from regionvlm.registry import DATASETS, PROMPTS


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
        node = prompt if prompt is not None else self.default_prompt
        self.prompt = PROMPTS.build(node, key_path="prompt", **self.prompt_runtime()) if node is not None else None

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

    def set_epoch(self, epoch: int) -> None:
        """Re-draw prompt phrasings (and candidate order) each epoch."""
        self.epoch = epoch

    def rng(self, index: int) -> np.random.Generator | None:
        return np.random.default_rng([self.seed, self.epoch, index]) if self.train else None

    def image_path(self, file_name: str) -> str:
        return str(self.image_root / file_name) if self.image_root else file_name

    def _limit(self, items: list) -> list:
        return items[: self.max_samples] if self.max_samples else items

    def __len__(self) -> int:
        return len(self.items)


# -- COCO-format instances ------------------------------------------------------------------------------------
def _ann_region(ann: dict, use: str) -> tuple[str, Any]:
    seg = ann.get("segmentation")
    if use == "box" or not seg:
        x, y, w, h = ann["bbox"]
        return ("box", [x, y, x + w, y + h])
    return ("polygon" if isinstance(seg, list) else "rle", seg)


@DATASETS.register("coco_instances")
class CocoInstancesDataset(RegionDataset):
    """Region classification from a COCO-format instances json (COCO, V3Det, ...): one sample per annotation."""

    task = "region_classification"
    # "... a single word or phrase"; set a vocabulary in YAML
    default_prompt: ClassVar[dict | None] = {"type": "region_classification"}

    def __init__(self, ann_file: str, image_root: str | None = None, skip_crowd: bool = True,
                 min_area: float = 0.0, region: str = "mask", **kw: Any):
        """``region``: ``mask`` (the segmentation) or ``box`` (the bbox only)."""
        if region not in ("mask", "box"):
            raise DataError(f"region: expected 'mask' or 'box', got {region!r}")
        self.coco = formats.CocoInstances(ann_file)
        super().__init__(image_root, **kw)
        self.region = region
        self.items = self._limit([
            a for a in self.coco.anns.values()
            if not (skip_crowd and a.get("iscrowd", 0)) and a.get("area", np.inf) >= min_area])

    def prompt_runtime(self) -> dict[str, Any]:
        return {"categories": self.coco.category_names}

    def __getitem__(self, i: int) -> dict:
        ann = self.items[i]
        im = self.coco.images[ann["image_id"]]
        regions = Regions([_ann_region(ann, self.region)], (im["height"], im["width"]),
                          out_of_bounds=self.out_of_bounds, where=f"{self.coco.path}: annotation {ann['id']}")
        label = self.coco.category_name(ann)
        return {"id": f"coco-{ann['id']}", "image": self.image_path(im["file_name"]), "regions": regions,
                "conversations": self.prompt.build(region=1, answer=label, rng=self.rng(i)),
                "target": {"ann_id": ann["id"], "category_id": ann["category_id"], "label": label},
                "task": self.task}


# -- RefCOCO / RefCOCO+ / RefCOCOg ----------------------------------------------------------------------------
@DATASETS.register("refcoco")
class RefCocoDataset(RegionDataset):
    """RefCOCO/+/g refs pickle + instances.json: region captions (``task: caption``) or referring-expression
    comprehension over candidate regions (``task: rec``, answer "Region [k].")."""

    def __init__(self, refs_file: str, instances_file: str, image_root: str | None = None, split: str = "train",
                 task: str = "caption", per: str = "sentence", proposals_file: str | None = None,
                 max_candidates: int | None = None, shuffle_candidates: bool = False, region: str = "mask",
                 **kw: Any):
        """``per``: one caption sample per ``sentence`` or per ``ref`` (all sentences as references).
        ``proposals_file``: COCO detection results (``[{"image_id", "bbox", "score", "segmentation"?}]``) used
        as REC candidates instead of the image's annotations; the answer is then the proposal with the best
        IoU ≥ 0.5 with the referred box, else "No corresponding options found."."""
        if task not in ("caption", "rec"):
            raise DataError(f"task: expected 'caption' or 'rec', got {task!r}")
        if per not in ("sentence", "ref"):
            raise DataError(f"per: expected 'sentence' or 'ref', got {per!r}")
        self.task = "brief_caption" if task == "caption" else "rec"
        self.default_prompt = {"type": self.task}
        super().__init__(image_root, **kw)
        self.coco = formats.CocoInstances(instances_file)
        self.refs_file = str(refs_file)
        refs = [r for r in formats.read_refs(refs_file) if r["split"] == split]
        for r in refs:
            if r["ann_id"] not in self.coco.anns:
                raise DataError(f"{refs_file}: ref {r['ref_id']}.ann_id: {r['ann_id']} not in {instances_file}")
        self.mode, self.region = task, region
        self.max_candidates, self.shuffle_candidates = max_candidates, shuffle_candidates
        self.proposals = self._read_proposals(proposals_file) if proposals_file else None
        if task == "caption" and per == "ref":
            self.items = self._limit([(r, None) for r in refs])
        else:
            self.items = self._limit([(r, s) for r in refs for s in r["sentences"]])

    @staticmethod
    def _read_proposals(path: str) -> dict[int, list[dict]]:
        rows = formats.read_json(path)
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a list of detections")
        by_image: dict[int, list[dict]] = {}
        for i, p in enumerate(rows):
            if not isinstance(p, dict) or "image_id" not in p or "bbox" not in p:
                raise DataError(f"{path}: [{i}]: expected 'image_id' and 'bbox'")
            by_image.setdefault(p["image_id"], []).append(p)
        for v in by_image.values():
            v.sort(key=lambda p: -p.get("score", 0.0))
        return by_image

    def _image(self, ref: dict) -> tuple[dict, str]:
        im = self.coco.images.get(ref["image_id"])
        if im is None:
            raise DataError(f"{self.refs_file}: ref {ref['ref_id']}.image_id: {ref['image_id']} not in instances")
        return im, self.image_path(im.get("file_name") or formats.refcoco_image_file(ref["image_id"]))

    def __getitem__(self, i: int) -> dict:
        ref, sent = self.items[i]
        im, path = self._image(ref)
        size = (im["height"], im["width"])
        ann = self.coco.anns[ref["ann_id"]]
        where = f"{self.refs_file}: ref {ref['ref_id']}"
        rng = self.rng(i)
        if self.mode == "caption":
            sents = [s["sent"] for s in ref["sentences"]] if sent is None else [sent["sent"]]
            regions = Regions([_ann_region(ann, self.region)], size, self.out_of_bounds, where)
            sid = f"refcoco-{ref['ref_id']}" + ("" if sent is None else f"-{sent.get('sent_id', 0)}")
            return {"id": sid, "image": path, "regions": regions,
                    "conversations": self.prompt.build(region=1, answer=sents[0], rng=rng),
                    "target": {"ref_id": ref["ref_id"], "sentences": sents}, "task": self.task}
        return self._rec_sample(ref, sent, ann, im, path, rng, where)

    def _rec_sample(self, ref, sent, ann, im, path, rng, where) -> dict:
        size = (im["height"], im["width"])
        if self.proposals is not None:
            props = self.proposals.get(ref["image_id"], [])[: self.max_candidates or None]
            items = [_ann_region(p, self.region) for p in props]
            cand_ids = [None] * len(props)
            boxes = np.array([p["bbox"] for p in props], dtype=float).reshape(-1, 4)
            ious = box_iou_xywh(boxes, np.asarray(ann["bbox"], dtype=float))
            answer = int(np.argmax(ious)) if len(ious) and ious.max() >= 0.5 else None
        else:
            anns = sorted(self.coco.anns_by_image[ref["image_id"]], key=lambda a: a["id"])
            if self.max_candidates and len(anns) > self.max_candidates:  # keep the referred one
                others = [a for a in anns if a["id"] != ann["id"]][: self.max_candidates - 1]
                anns = sorted(others + [ann], key=lambda a: a["id"])
            if self.shuffle_candidates and rng is not None:
                anns = [anns[k] for k in rng.permutation(len(anns))]
            items = [_ann_region(a, self.region) for a in anns]
            cand_ids = [a["id"] for a in anns]
            answer = cand_ids.index(ann["id"])
        regions = Regions(items, size, self.out_of_bounds, where)
        x, y, w, h = ann["bbox"]
        return {"id": f"refcoco-{sent.get('sent_id', ref['ref_id'])}", "image": path, "regions": regions,
                "conversations": self.prompt.build(expression=sent["sent"], num_candidates=len(items),
                                                   answer_index=None if answer is None else answer + 1, rng=rng),
                "target": {"sent_id": sent.get("sent_id"), "ref_id": ref["ref_id"], "ann_id": ann["id"],
                           "candidate_ann_ids": cand_ids, "answer": ReferringExpressionPrompt.answer_for(
                               None if answer is None else answer + 1), "gt_box": [x, y, x + w, y + h]},
                "task": self.task}


# -- Visual Genome --------------------------------------------------------------------------------------------
@DATASETS.register("vg_regions")
class VgRegionsDataset(RegionDataset):
    """Visual Genome region descriptions (boxes): one brief-caption sample per region."""

    task = "brief_caption"
    default_prompt: ClassVar[dict | None] = {"type": "brief_caption"}

    def __init__(self, regions_file: str, images_file: str, image_root: str | None = None,
                 split_file: str | None = None, split: str | None = None, min_size: float = 0.0,
                 image_file: str = "{image_id}.jpg", **kw: Any):
        """``split_file``: a DenseCap/GRiT-style ``{"train": [image ids], "val": [...], "test": [...]}`` with
        ``split`` the key to use. ``image_file``: file name pattern (``{image_id}``), or ``url`` for the last
        part of the image's url."""
        super().__init__(image_root, **kw)
        self.images = formats.read_vg_images(images_file)
        keep = None
        if split_file:
            splits = formats.read_json(split_file)
            if not isinstance(splits, dict) or split not in splits:
                raise DataError(f"{split_file}: {split}: split not in the file "
                                f"(has {', '.join(splits) if isinstance(splits, dict) else 'no keys'})")
            keep = set(splits[split])
        self.regions_file, self.image_file = str(regions_file), image_file
        items = []
        for entry in formats.read_vg_regions(regions_file):
            for r in entry["regions"]:
                if keep is not None and r["image_id"] not in keep:
                    continue
                if min(r["width"], r["height"]) >= max(min_size, 1e-9):
                    items.append(r)
        self.items = self._limit(items)

    def __getitem__(self, i: int) -> dict:
        r = self.items[i]
        im = self.images.get(r["image_id"])
        if im is None:
            raise DataError(f"{self.regions_file}: region {r['region_id']}.image_id: {r['image_id']} "
                            "not in image_data")
        name = im["url"].rsplit("/", 1)[-1] if self.image_file == "url" else self.image_file.format(**im)
        regions = Regions.from_xywh([[r["x"], r["y"], r["width"], r["height"]]], (im["height"], im["width"]),
                                    out_of_bounds=self.out_of_bounds, where=f"{self.regions_file}: region "
                                                                            f"{r['region_id']}")
        phrase = r["phrase"].strip()
        return {"id": f"vg-{r['region_id']}", "image": self.image_path(name), "regions": regions,
                "conversations": self.prompt.build(region=1, answer=phrase, rng=self.rng(i)),
                "target": {"region_id": r["region_id"], "phrase": phrase}, "task": self.task}


# -- conversations --------------------------------------------------------------------------------------------
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


# -- POPE -----------------------------------------------------------------------------------------------------
@DATASETS.register("pope")
class PopeDataset(RegionDataset):
    """POPE yes/no object-existence questions (JSON lines)."""

    task = "yes_no"
    default_prompt: ClassVar[dict | None] = {"type": "yes_no"}

    def __init__(self, path: str, image_root: str | None = None, **kw: Any):
        super().__init__(image_root, **kw)
        self.items = self._limit(formats.read_pope(path))

    def __getitem__(self, i: int) -> dict:
        q = self.items[i]
        return {"id": str(q["question_id"]), "image": self.image_path(q["image"]), "regions": Regions(),
                "conversations": self.prompt.build(question=q["text"], answer=q.get("label"), rng=self.rng(i)),
                "target": q.get("label"), "task": self.task}


__all__ = [
    "CocoInstancesDataset",
    "ConversationsDataset",
    "LlavaDataset",
    "PopeDataset",
    "RefCocoDataset",
    "RegionDataset",
    "VgRegionsDataset",
]
