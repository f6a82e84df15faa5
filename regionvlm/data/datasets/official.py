"""Benchmark files read as their authors distribute them (docs/benchmarks.md names each source):

- ``region_captions``: COCO-caption format with one region per image entry — GLaMM's
  ``finetune_refcocog_val_captions.json`` (MDETR-derived RefCOCOg val, one entry per sentence) and
  ``test_caption.json`` (GRiT's VG test set); the references are the ``caption`` fields of the entry's
  annotations (what ``COCOEvalCap`` reads).
- ``spatialrgpt_bench``: SpatialRGPT-Bench's ``SpatialRGPT-Bench_v1.json`` (a list of questions with
  ``image_info``, ``text_q``, ``qa_info``, ``rle``/``bbox`` and a two-turn ``conversations`` using ``<mask>``).
- ``dlc_bench``: DLC-Bench's ``annotations.json`` (COCO instances) + ``qa.json`` (questions per annotation id).
- ``osprey_categories``: Osprey's LVIS/PACO eval files (``lvis_val_1k_category.json``,
  ``paco_val_1k_category.json``: entries with ``file_name``, ``height``, ``width``, ``categories`` and
  ``annotations``, one region per category).
"""

from __future__ import annotations

from typing import Any, ClassVar

from regionvlm.data import formats
from regionvlm.data.datasets.base import RegionDataset, ann_region, check_region_kind
from regionvlm.data.structures import Regions
from regionvlm.errors import DataError
from regionvlm.registry import DATASETS


def _entries(path: str, data: Any, key: str) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(f"{path}: {key}: expected a list")
    return data[key]


@DATASETS.register("region_captions")
class RegionCaptionsDataset(RegionDataset):
    """One sample per image entry of a COCO-caption-format region caption file (GLaMM's RefCOCOg/VG files):
    the region is the annotation whose id is the entry's id (GLaMM's reading), else the entry's first one."""

    task = "brief_caption"
    default_prompt: ClassVar[dict | None] = {"type": "brief_caption"}

    def __init__(self, path: str, image_root: str | None = None, region: str = "mask", **kw: Any):
        super().__init__(image_root, **kw)
        self.path, self.region = str(path), check_region_kind(region)
        data = formats.read_json(path)
        images = _entries(self.path, data, "images")
        by_image: dict[Any, list[dict]] = {}
        for j, a in enumerate(_entries(self.path, data, "annotations")):
            formats._require(a, ("image_id", "bbox"), f"{self.path}: annotations[{j}]")
            by_image.setdefault(a["image_id"], []).append(a)
        items = []
        for j, im in enumerate(images):
            formats._require(im, ("id", "file_name", "height", "width"), f"{self.path}: images[{j}]")
            anns = by_image.get(im["id"])
            if not anns:
                raise DataError(f"{self.path}: images[{j}] (id {im['id']}): no annotation")
            caps = [a.get("caption", im.get("caption")) for a in anns]
            if any(not isinstance(c, str) for c in caps):
                raise DataError(f"{self.path}: image {im['id']}: annotations need a 'caption' string")
            region = next((a for a in anns if a.get("id") == im["id"]), anns[0])
            items.append((im, region, caps))
        self.items = self._limit(items)

    def __getitem__(self, i: int) -> dict:
        im, ann, caps = self.items[i]
        regions = Regions([ann_region(ann, self.region)], (im["height"], im["width"]), self.out_of_bounds,
                          where=f"{self.path}: image {im['id']}")
        return {"id": f"cap-{im['id']}", "image": self.image_path(im["file_name"]), "regions": regions,
                "conversations": self.ask(i, region=1, answer=caps[0]),
                "target": {"image_id": im["id"], "captions": caps}, "task": self.task}


def spatial_kind(info: dict) -> str:
    """A SpatialRGPT-Bench question's answer kind: ``direction`` (clock positions), ``quantitative`` (a length),
    ``choice`` (``*_choice``: a region) or ``predicate`` (yes/no)."""
    category = str(info.get("category", ""))
    if info.get("type") == "quantitative":
        return "direction" if category == "direction" else "quantitative"
    return "choice" if "choice" in category else "predicate"


@DATASETS.register("spatialrgpt_bench")
class SpatialRGPTBenchDataset(RegionDataset):
    """SpatialRGPT-Bench as distributed: the human turn's ``<mask>`` k becomes ``<region{k}>``; regions are the
    ``rle`` masks (the reference's default), else the ``bbox`` boxes (x1, y1, x2, y2)."""

    task = "spatial_qa"
    default_prompt: ClassVar[dict | None] = {"type": "spatial_qa"}

    def __init__(self, path: str, image_root: str | None = None, region: str = "mask", **kw: Any):
        super().__init__(image_root, **kw)
        self.path, self.region = str(path), check_region_kind(region)
        rows = formats.read_json(path)
        if not isinstance(rows, list):
            raise DataError(f"{self.path}: expected a list of questions")
        for j, r in enumerate(rows):
            where = f"{self.path}: [{j}]"
            formats._require(r, ("id", "image_info", "qa_info", "conversations"), where)
            formats._require(r["image_info"], ("file_path", "height", "width"), f"{where}.image_info")
            conv = r["conversations"]
            if not isinstance(conv, list) or len(conv) < 2 or not all(isinstance(c, dict) for c in conv[:2]):
                raise DataError(f"{where}.conversations: expected a question and an answer turn")
            if not r.get("rle") and not r.get("bbox"):
                raise DataError(f"{where}: expected 'rle' or 'bbox'")
        self.items = self._limit(rows)

    def question(self, row: dict) -> str:
        text = row["conversations"][0]["value"].replace("<image>", "").strip()
        first, *rest = text.split("<mask>")
        return first + "".join(f"<region{k}>{p}" for k, p in enumerate(rest, 1))

    def __getitem__(self, i: int) -> dict:
        r = self.items[i]
        info = r["image_info"]
        if self.region == "mask" and r.get("rle"):
            items = [("rle", m) for m in r["rle"]]
        else:
            items = [("box", b) for b in r["bbox"]]
        regions = Regions(items, (info["height"], info["width"]), self.out_of_bounds,
                          where=f"{self.path}: id {r['id']}")
        answer = r["conversations"][1]["value"]
        return {"id": f"srgpt-{r['id']}", "image": self.image_path(info["file_path"]), "regions": regions,
                "conversations": self.ask(i, question=self.question(r), kind=spatial_kind(r["qa_info"]),
                                          answer=answer),
                "target": {"id": r["id"], "answer": answer, "qa_info": r["qa_info"]}, "task": self.task}


@DATASETS.register("dlc_bench")
class DLCBenchDataset(RegionDataset):
    """DLC-Bench as distributed: one sample per annotation of ``annotations.json`` that ``qa.json`` asks about,
    in the order of DAM's ``get_model_outputs.py`` (images in file order, then their annotations)."""

    task = "detailed_caption"
    default_prompt: ClassVar[dict | None] = {"type": "detailed_caption"}

    def __init__(self, ann_file: str, qa_file: str, image_root: str | None = None, **kw: Any):
        super().__init__(image_root, **kw)
        self.coco = formats.CocoInstances(ann_file)
        qa = formats.read_json(qa_file)
        if not isinstance(qa, dict):
            raise DataError(f"{qa_file}: expected an object of question lists keyed by annotation id")
        self.qa, self.qa_file = qa, str(qa_file)
        known = {str(a) for a in self.coco.anns}
        missing = [k for k in qa if str(k) not in known]
        if missing:
            raise DataError(f"{qa_file}: {missing[0]}: no annotation with this id in {ann_file}"
                            + (f" ({len(missing)} keys)" if len(missing) > 1 else ""))
        self.items = self._limit([a for im in self.coco.images for a in self.coco.anns_by_image[im]
                                  if str(a["id"]) in qa])

    def __getitem__(self, i: int) -> dict:
        ann = self.items[i]
        im = self.coco.images[ann["image_id"]]
        regions = Regions([ann_region(ann)], (im["height"], im["width"]), self.out_of_bounds,
                          where=f"{self.coco.path}: annotation {ann['id']}")
        return {"id": f"dlc-{ann['id']}", "image": self.image_path(im["file_name"]), "regions": regions,
                "conversations": self.ask(i, region=1), "target": {"ann_id": ann["id"]}, "task": self.task}


@DATASETS.register("osprey_categories")
class OspreyCategoriesDataset(RegionDataset):
    """Osprey's LVIS/PACO open-vocabulary classification files: one sample per (entry, region); the official
    id is the LVIS/PACO annotation id when the file's annotations carry one (``"id"``, every one of them, unique),
    so that predictions join with LVIS; otherwise the region's position in the file (entries in order, then their
    regions)."""

    task = "region_classification"
    default_prompt: ClassVar[dict | None] = {"type": "region_classification"}

    def __init__(self, path: str, image_root: str | None = None, **kw: Any):
        super().__init__(image_root, **kw)
        self.path = str(path)
        data = formats.read_json(path)
        if not isinstance(data, list):
            raise DataError(f"{self.path}: expected a list of image entries")
        items = []
        for j, e in enumerate(data):
            where = f"{self.path}: [{j}]"
            formats._require(e, ("file_name", "height", "width", "categories", "annotations"), where)
            if len(e["categories"]) != len(e["annotations"]):
                raise DataError(f"{where}: categories and annotations differ in length")
            for k, (cat, ann) in enumerate(zip(e["categories"], e["annotations"])):
                formats._require(ann, ("segmentation",), f"{where}.annotations[{k}]")
                items.append((len(items), e, cat, ann))
        self.items = self._limit(self._official_ids(items))

    def _official_ids(self, items: list) -> list:
        """Positions replaced by the annotations' own ids when the file has them for every region."""
        has = [isinstance(ann.get("id"), int) and not isinstance(ann.get("id"), bool) for _, _, _, ann in items]
        if not any(has):
            return items
        if not all(has):
            pos = has.index(False)
            raise DataError(f"{self.path}: region {pos}: no integer annotation 'id', where other regions have one "
                            "(ids are read for every region or none)")
        seen: dict[int, int] = {}
        for pos, (_, _, _, ann) in enumerate(items):
            if ann["id"] in seen:
                raise DataError(f"{self.path}: region {pos}: annotation id {ann['id']} also at region "
                                f"{seen[ann['id']]}")
            seen[ann["id"]] = pos
        return [(ann["id"], e, cat, ann) for _, e, cat, ann in items]

    def __getitem__(self, i: int) -> dict:
        idx, e, cat, ann = self.items[i]
        seg = ann["segmentation"]
        regions = Regions([("polygon" if isinstance(seg, list) else "rle", seg)], (e["height"], e["width"]),
                          self.out_of_bounds, where=f"{self.path}: region {idx}")
        return {"id": f"osprey-{idx}", "image": self.image_path(e["file_name"]), "regions": regions,
                "conversations": self.ask(i, region=1, answer=cat),
                "target": {"id": idx, "category": cat, "answer": cat}, "task": self.task}
