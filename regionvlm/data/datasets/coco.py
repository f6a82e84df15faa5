"""COCO-format datasets: instances (region classification) and RefCOCO/+/g (region captions, REC)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from regionvlm.data import formats
from regionvlm.data.datasets.base import (
    RegionDataset,
    ann_region,
    check_region_kind,
    check_regions_per_sample,
    group_by_image,
    grouped_sample,
)
from regionvlm.data.geometry import box_iou_xywh
from regionvlm.data.structures import Regions
from regionvlm.errors import DataError
from regionvlm.registry import DATASETS
from regionvlm.text.prompts import ReferringExpressionPrompt


@DATASETS.register("coco_instances")
class CocoInstancesDataset(RegionDataset):
    """Region classification from a COCO-format instances json (COCO, V3Det, ...): one sample per annotation, or
    (``regions_per_sample``: N or ``all``) an image's annotations in groups, one question per region, all
    answers in the loss, the image encoded and carried through the LLM once per group."""

    task = "region_classification"
    # "... a single word or phrase"; set a vocabulary in YAML
    default_prompt: ClassVar[dict | None] = {"type": "region_classification"}

    def __init__(self, ann_file: str, image_root: str | None = None, skip_crowd: bool = True,
                 min_area: float = 0.0, region: str = "mask", regions_per_sample: int | str = 1, **kw: Any):
        """``region``: ``mask`` (the segmentation) or ``box`` (the bbox only). Items in annotation-id order;
        grouped: groups of one image's annotations in id order (`group_by_image`), turns shuffled per epoch."""
        self.region = check_region_kind(region)
        self.per_sample = check_regions_per_sample(regions_per_sample)
        self.coco = formats.CocoInstances(ann_file)
        super().__init__(image_root, **kw)
        anns = [self.coco.anns[k] for k in sorted(self.coco.anns)
                if not (skip_crowd and self.coco.anns[k].get("iscrowd", 0))
                and self.coco.anns[k].get("area", np.inf) >= min_area]
        if self.per_sample != 1:
            anns = group_by_image(anns, lambda a: a["image_id"], self.per_sample)
        self.items = self._limit(anns)

    def prompt_runtime(self) -> dict[str, Any]:
        return {"categories": self.coco.category_names}

    def __getitem__(self, i: int) -> dict:
        if self.per_sample != 1:
            return self._group(i)
        ann = self.items[i]
        im = self.coco.images[ann["image_id"]]
        regions = Regions([ann_region(ann, self.region)], (im["height"], im["width"]),
                          out_of_bounds=self.out_of_bounds, where=f"{self.coco.path}: annotation {ann['id']}")
        label = self.coco.category_name(ann)
        return {"id": f"coco-{ann['id']}", "image": self.image_path(im["file_name"]), "regions": regions,
                "conversations": self.ask(i, region=1, answer=label),
                "target": {"ann_id": ann["id"], "category_id": ann["category_id"], "answer": label},
                "task": self.task}


    def _group(self, i: int) -> dict:
        anns = self.items[i]
        im = self.coco.images[anns[0]["image_id"]]
        regions = Regions([ann_region(a, self.region) for a in anns], (im["height"], im["width"]),
                          out_of_bounds=self.out_of_bounds,
                          where=f"{self.coco.path}: annotations {[a['id'] for a in anns]}")
        labels = [self.coco.category_name(a) for a in anns]
        rng = self.rng(i)
        turns = [self.ask(i, rng=rng, region=k + 1, answer=label) for k, label in enumerate(labels)]
        return {"id": f"coco-{anns[0]['id']}-x{len(anns)}", "image": self.image_path(im["file_name"]),
                "regions": regions, **grouped_sample(turns, rng),
                "target": {"ann_ids": [a["id"] for a in anns], "category_ids": [a["category_id"] for a in anns],
                           "answers": labels},
                "task": self.task}


@DATASETS.register("refcoco")
class RefCocoDataset(RegionDataset):
    """RefCOCO/+/g refs pickle + instances.json: region captions (``task: caption``) or referring-expression
    comprehension over candidate regions (``task: rec``, answer "Region [k].")."""

    def __init__(self, refs_file: str, instances_file: str, image_root: str | None = None, split: str = "train",
                 task: str = "caption", per: str = "sentence", proposals_file: str | None = None,
                 max_candidates: int | None = None, shuffle_candidates: bool = False, region: str = "mask",
                 **kw: Any):
        """``per``: one caption sample per ``sentence`` or per ``ref`` (all sentences as references).
        REC candidates are the image's annotations in ascending id, crowd regions left out (a crowd region is
        a group, not one object; the referred region is always kept), at most ``max_candidates``.
        ``proposals_file``: COCO detection results (``[{"image_id", "bbox", "score", "segmentation"?}]``) used
        as REC candidates instead of the image's annotations; the answer is then the proposal with the best
        IoU ≥ 0.5 with the referred box, else "No corresponding options found."."""
        if task not in ("caption", "rec"):
            raise DataError(f"task: expected 'caption' or 'rec', got {task!r}")
        if per not in ("sentence", "ref"):
            raise DataError(f"per: expected 'sentence' or 'ref', got {per!r}")
        self.task = "brief_caption" if task == "caption" else "rec"
        self.default_prompt = {"type": self.task}
        self.mode, self.region = task, check_region_kind(region)
        super().__init__(image_root, **kw)
        self.coco = formats.CocoInstances(instances_file)
        self.refs_file = str(refs_file)
        # refs in ref-id order: a fixed order, so that `max_samples`/`limit` mean the same items everywhere
        self.refs = sorted((r for r in formats.read_refs(refs_file) if r["split"] == split), key=lambda r: r["ref_id"])
        if not self.refs:
            raise DataError(f"{refs_file}: no refs in split {split!r}")
        for r in self.refs:
            if r["ann_id"] not in self.coco.anns:
                raise DataError(f"{refs_file}: ref {r['ref_id']}.ann_id: {r['ann_id']} not in {instances_file}")
        self.max_candidates, self.shuffle_candidates = max_candidates, shuffle_candidates
        self.proposals = self._read_proposals(proposals_file) if proposals_file else None
        if task == "caption" and per == "ref":
            self.items = self._limit([(r, None) for r in self.refs])
        else:
            self.items = self._limit([(r, s) for r in self.refs for s in r["sentences"]])

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

    def candidates(self, ref: dict) -> list[dict]:
        """The REC candidates of a ref (annotations, ascending id): the image's non-crowd annotations and the
        referred one, capped at ``max_candidates`` (the referred one kept)."""
        anns = sorted((a for a in self.coco.anns_by_image[ref["image_id"]]
                       if not a.get("iscrowd", 0) or a["id"] == ref["ann_id"]), key=lambda a: a["id"])
        if self.max_candidates and len(anns) > self.max_candidates:
            others = [a for a in anns if a["id"] != ref["ann_id"]][: self.max_candidates - 1]
            anns = sorted([*others, self.coco.anns[ref["ann_id"]]], key=lambda a: a["id"])
        return anns

    def __getitem__(self, i: int) -> dict:
        ref, sent = self.items[i]
        im, path = self._image(ref)
        ann = self.coco.anns[ref["ann_id"]]
        where = f"{self.refs_file}: ref {ref['ref_id']}"
        if self.mode == "caption":
            sents = [s["sent"] for s in ref["sentences"]] if sent is None else [sent["sent"]]
            regions = Regions([ann_region(ann, self.region)], (im["height"], im["width"]), self.out_of_bounds, where)
            sid = f"refcoco-{ref['ref_id']}" + ("" if sent is None else f"-{sent.get('sent_id', 0)}")
            return {"id": sid, "image": path, "regions": regions,
                    "conversations": self.ask(i, region=1, answer=sents[0]),
                    "target": {"ref_id": ref["ref_id"], "captions": sents}, "task": self.task}
        return self._rec_sample(i, ref, sent, ann, im, path, where)

    def _rec_sample(self, i, ref, sent, ann, im, path, where) -> dict:
        rng = self.rng(i)
        if self.proposals is not None:
            props = self.proposals.get(ref["image_id"], [])[: self.max_candidates or None]
            items = [ann_region(p, self.region) for p in props]
            cand_ids = [None] * len(props)
            boxes = np.array([p["bbox"] for p in props], dtype=float).reshape(-1, 4)
            ious = box_iou_xywh(boxes, ann["bbox"])
            answer = int(np.argmax(ious)) if len(ious) and ious.max() >= 0.5 else None
        else:
            anns = self.candidates(ref)
            if self.shuffle_candidates and rng is not None:
                anns = [anns[k] for k in rng.permutation(len(anns))]
            items = [ann_region(a, self.region) for a in anns]
            cand_ids = [a["id"] for a in anns]
            answer = cand_ids.index(ann["id"])
        regions = Regions(items, (im["height"], im["width"]), self.out_of_bounds, where)
        x, y, w, h = ann["bbox"]
        index = None if answer is None else answer + 1
        return {"id": f"refcoco-{sent.get('sent_id', ref['ref_id'])}", "image": path, "regions": regions,
                "conversations": self.ask(i, rng, expression=sent["sent"], num_candidates=len(items),
                                          answer_index=index),
                "target": {"sent_id": sent.get("sent_id"), "ref_id": ref["ref_id"], "ann_id": ann["id"],
                           "candidate_ann_ids": cand_ids, "answer": ReferringExpressionPrompt.answer_for(index),
                           "gt_box": [x, y, x + w, y + h]},
                "task": self.task}
