"""Stage 1, sources: the existing dataset readers (``DATASETS`` nodes) → images with their annotated regions.

Every registered dataset yields samples of one schema (`regionvlm.data.datasets`); here their regions are
grouped by image, so that an image is decoded and captioned once whatever number of regions or sources name it.
A region's class name is the sample's reference: the category of ``coco_instances`` (COCO, V3Det), the phrase of
``vg_regions`` or the expression of ``refcoco`` captions; conversation files give regions without one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from regionvlm.data.structures import Regions
from regionvlm.errors import ConfigError


@dataclass
class SourceRegion:
    id: str  # unique within the job: "<source index>/<sample id>[#k]"
    item: tuple[str, Any]  # one `Regions` item (kind, data) in the image's frame
    class_name: str | None
    area: float  # pixels (the annotation's area when it has one)
    crowd: bool = False


@dataclass
class SourceImage:
    key: str  # the image path: what groups regions of several samples and sources
    image: Any
    size: tuple[int, int] | None  # (height, width) when the annotations know it
    regions: list[SourceRegion] = field(default_factory=list)

    def region_set(self) -> Regions:
        return Regions([r.item for r in self.regions], self.size)


def _class_name(target: Any) -> str | None:
    if not isinstance(target, dict):
        return None
    if isinstance(target.get("answer"), str):
        return target["answer"]
    captions = target.get("captions")
    return captions[0] if isinstance(captions, list) and captions else None


def _area(regions: Regions, k: int) -> float:
    if regions.image_size is not None:
        from pycocotools import mask as mask_utils

        return float(mask_utils.area(regions[k].to_rles()[0]))
    x0, y0, x1, y1 = regions[k].to_boxes()[0]
    return float((x1 - x0) * (y1 - y0))


def _regions_of(ds: Any, index: int, sample: dict, prefix: str) -> list[SourceRegion]:
    regions: Regions = sample["regions"]
    target = sample.get("target") or {}
    base = f"refcoco-{target['ref_id']}" if isinstance(target, dict) and "ref_id" in target else sample["id"]
    ann = ds.coco.anns.get(target.get("ann_id")) if hasattr(ds, "coco") and isinstance(target, dict) else None
    if sample.get("task") == "rec":
        raise ConfigError(f"{prefix}: a refcoco source must use task: caption (rec samples hold candidates)")
    out = []
    for k, item in enumerate(regions.items):
        area = float(ann["area"]) if ann and len(regions) == 1 and "area" in ann else _area(regions, k)
        out.append(SourceRegion(
            id=f"{prefix}/{base}" + (f"#{k + 1}" if len(regions) > 1 else ""), item=item,
            class_name=_class_name(target) if len(regions) == 1 else None, area=area,
            crowd=bool(ann.get("iscrowd", 0)) if ann else False))
    return out


def read_sources(nodes: list[dict]) -> list[SourceImage]:
    """Build each source with ``train: false`` (no sampled phrasing) and group its regions by image. Images in
    path order, regions in source then dataset order; a region named twice (RefCOCO: one sample per sentence) is
    kept once."""
    from regionvlm.registry import DATASETS

    images: dict[str, SourceImage] = {}
    seen: set[str] = set()
    for i, node in enumerate(nodes):
        node = {"train": False, **node}
        ds = DATASETS.build(node, key_path=f"datagen.sources[{i}]")
        for j in range(len(ds)):
            sample = ds[j]
            if sample["image"] is None:
                continue
            key = str(sample["image"])
            im = images.setdefault(key, SourceImage(key, sample["image"], sample["regions"].image_size))
            if im.size is None:
                im.size = sample["regions"].image_size
            for region in _regions_of(ds, j, sample, str(i)):
                if region.id not in seen:
                    seen.add(region.id)
                    im.regions.append(region)
    return [images[k] for k in sorted(images) if images[k].regions]


def region_dict(item: tuple[str, Any]) -> dict:
    """One `Regions` item as a conversation-jsonl region (what `Regions.from_dicts` reads back)."""
    kind, data = item
    if kind == "box":
        x0, y0, x1, y1 = (float(v) for v in data)
        return {"bbox": [x0, y0, x1 - x0, y1 - y0]}
    if kind == "polygon":
        return {"segmentation": [np.asarray(p, dtype=float).tolist() for p in data]}
    if kind == "mask":
        from pycocotools import mask as mask_utils

        data = mask_utils.encode(np.asfortranarray(np.asarray(data, dtype=np.uint8)))
    counts = data["counts"]
    return {"segmentation": {"size": [int(v) for v in data["size"]],
                             "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}}
