"""Visual Genome region descriptions."""

from __future__ import annotations

from typing import Any, ClassVar

from regionvlm.data import formats
from regionvlm.data.datasets.base import RegionDataset
from regionvlm.data.structures import Regions
from regionvlm.errors import DataError
from regionvlm.registry import DATASETS


@DATASETS.register("vg_regions")
class VgRegionsDataset(RegionDataset):
    """Visual Genome region descriptions (boxes): one brief-caption sample per region."""

    task = "brief_caption"
    default_prompt: ClassVar[dict | None] = {"type": "brief_caption"}

    def __init__(self, regions_file: str, images_file: str | None = None, image_root: str | None = None,
                 split_file: str | None = None, split: str | None = None, min_size: float = 0.0,
                 image_file: str = "{image_id}.jpg", **kw: Any):
        """``images_file``: ``image_data.json`` (image sizes, urls); without it the size comes from the decoded
        image. ``split_file``: a JSON list of image ids, or a DenseCap/GRiT-style ``{"train": [...], "val":
        [...], "test": [...]}`` with ``split`` the key to use. ``image_file``: file name pattern (fields of the
        region and the image, e.g. ``{image_id}``), or ``url`` for the last part of the image's url. Items in
        region-id order."""
        super().__init__(image_root, **kw)
        if image_file == "url" and images_file is None:
            raise DataError("image_file: 'url' needs images_file (image_data.json holds the urls)")
        self.images = formats.read_vg_images(images_file) if images_file else None
        keep = formats.read_split_ids(split_file, split) if split_file else None
        self.regions_file, self.image_file = str(regions_file), image_file
        items = [r for entry in formats.read_vg_regions(regions_file) for r in entry["regions"]
                 if (keep is None or r["image_id"] in keep) and min(r["width"], r["height"]) >= max(min_size, 1e-9)]
        self.items = self._limit(sorted(items, key=lambda r: r["region_id"]))

    def __getitem__(self, i: int) -> dict:
        r = self.items[i]
        where = f"{self.regions_file}: region {r['region_id']}"
        im: dict = {}
        if self.images is not None:
            im = self.images.get(r["image_id"])
            if im is None:
                raise DataError(f"{where}.image_id: {r['image_id']} not in image_data")
        name = im["url"].rsplit("/", 1)[-1] if self.image_file == "url" else self.image_file.format(**{**r, **im})
        size = (im["height"], im["width"]) if im else None
        regions = Regions.from_xywh([[r["x"], r["y"], r["width"], r["height"]]], size,
                                    out_of_bounds=self.out_of_bounds, where=where)
        phrase = r["phrase"].strip()
        return {"id": f"vg-{r['region_id']}", "image": self.image_path(name), "regions": regions,
                "conversations": self.ask(i, region=1, answer=phrase),
                "target": {"region_id": r["region_id"], "captions": [phrase]}, "task": self.task}
