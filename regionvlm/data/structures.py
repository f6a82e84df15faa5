"""`Regions`: the regions of one image, in whatever form the annotation gave them.

A region is a box, a polygon (list of COCO polygons), a COCO RLE or a binary mask; one image may mix them (a
VG box next to a COCO polygon). Geometry stays in its own form for as long as possible: resizing a polygon is
exact and cheap, rasterising it afterwards at the processed size is more precise than resizing a big mask. RLEs
and masks are decoded only when a transform or `to_masks` needs pixels. pycocotools is the reference for every
rasterisation (polygon, box and RLE → mask), so a region means here exactly what it means to COCO tools.

Coordinates are continuous pixel coordinates (COCO's): pixel (i, j) covers [j, j+1) × [i, i+1), so a
resize by s maps x → x·s and a crop at (x0, y0) maps x → x − x0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from regionvlm.data.geometry import check_polygons, resize_mask_nearest, rle_to_mask, segmentation_to_rle
from regionvlm.errors import DataError

BOX, POLYGON, RLE, MASK = "box", "polygon", "rle", "mask"


# -- Regions --------------------------------------------------------------------------------------------------
class Regions:
    """The regions of one image (possibly none), each a box, polygon, RLE or mask.

    ``image_size`` is (height, width) of the frame the coordinates refer to; it may be ``None`` until the image
    is decoded (conversation files do not store sizes) — `with_image_size` then sets it and validates.

    Validation (at construction when the size is known): a box with zero or negative area, a polygon with
    fewer than 3 points and an RLE whose size is not the image size raise `DataError`; a box outside the image
    is clipped and counted in ``num_clipped`` (``out_of_bounds="clip"``) or rejected (``"error"``).
    """

    def __init__(self, items: Sequence[tuple[str, Any]] = (), image_size: tuple[int, int] | None = None,
                 out_of_bounds: str = "clip", where: str = "regions"):
        if out_of_bounds not in ("clip", "error"):
            raise DataError(f"{where}: out_of_bounds must be 'clip' or 'error', got {out_of_bounds!r}")
        self.items: list[tuple[str, Any]] = list(items)
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self.out_of_bounds = out_of_bounds
        self.where = where
        self.num_clipped = 0
        for k, (kind, data) in enumerate(self.items):
            self.items[k] = (kind, self._normalise(kind, data, f"{where}[{k}]"))
        if self.image_size is not None:
            self._validate_against_size()

    # -- construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_boxes(cls, boxes_xyxy, image_size=None, **kw) -> Regions:
        return cls([(BOX, b) for b in np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)], image_size, **kw)

    @classmethod
    def from_xywh(cls, boxes_xywh, image_size=None, **kw) -> Regions:
        b = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4).copy()
        b[:, 2:] += b[:, :2]
        return cls.from_boxes(b, image_size, **kw)

    @classmethod
    def from_dicts(cls, regions: Iterable[dict], image_size=None, **kw) -> Regions:
        """Region dicts as in the conversation jsonl (`region_from_dict`)."""
        where = kw.get("where", "regions")
        return cls([region_from_dict(r, f"{where}[{k}]") for k, r in enumerate(regions)], image_size, **kw)

    def _normalise(self, kind: str, data: Any, where: str) -> Any:
        if kind == BOX:
            box = _as_box(data, where)
            if box[2] <= box[0] or box[3] <= box[1]:
                raise DataError(f"{where}: box {box.tolist()} has zero or negative area")
            return box
        if kind == POLYGON:
            polys = [np.asarray(p, dtype=np.float64) for p in check_polygons(data, where)]
            if all(_shoelace(p) == 0 for p in polys):
                raise DataError(f"{where}: polygon has zero area (all points on one line): an empty region")
            return polys
        if kind == RLE:
            if not isinstance(data, dict) or "size" not in data or "counts" not in data:
                raise DataError(f"{where}: RLE needs 'size' and 'counts'")
            return data
        if kind == MASK:
            m = np.asarray(data).astype(bool)
            if m.ndim != 2:
                raise DataError(f"{where}: mask must be H×W, got shape {m.shape}")
            if not m.any():
                raise DataError(f"{where}: mask is empty (no pixel set)")
            return m
        raise DataError(f"{where}: unknown region kind {kind!r}")

    def _validate_against_size(self) -> None:
        h, w = self.image_size
        for k, (kind, data) in enumerate(self.items):
            where = f"{self.where}[{k}]"
            if kind == BOX:
                clipped = np.clip(data, 0, [w, h, w, h])
                if not np.array_equal(clipped, data):
                    if self.out_of_bounds == "error":
                        raise DataError(f"{where}: box {data.tolist()} is outside the image (w={w}, h={h})")
                    self.num_clipped += 1
                    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                        raise DataError(f"{where}: box {data.tolist()} lies entirely outside the image "
                                        f"(w={w}, h={h})")
                    self.items[k] = (BOX, clipped)
            elif kind == RLE:
                # normalises uncompressed RLE to compressed and checks the size
                rle = segmentation_to_rle(data, h, w, where)
                from pycocotools import mask as mask_utils

                if int(mask_utils.area(rle)) == 0:
                    raise DataError(f"{where}: RLE mask is empty (no pixel set)")
                self.items[k] = (RLE, rle)
            elif kind == POLYGON:
                from pycocotools import mask as mask_utils

                # a sliver of positive area can still cover no pixel centre: as empty as a zero-area polygon
                rle = mask_utils.merge(mask_utils.frPyObjects([p.tolist() for p in data], h, w))
                if int(mask_utils.area(rle)) == 0:
                    raise DataError(f"{where}: polygon covers no pixel of the {h}×{w} image: an empty region")
            elif kind == MASK and data.shape != (h, w):
                raise DataError(f"{where}: mask shape {data.shape} does not match the image size ({h}, {w})")

    def with_image_size(self, h: int, w: int) -> Regions:
        """Set the frame size once the image is decoded (validates); a different known size is an error."""
        if self.image_size is not None:
            if self.image_size != (h, w):
                raise DataError(f"{self.where}: annotations are for an image of size {self.image_size} (h, w) "
                                f"but the image is ({h}, {w})")
            return self
        out = self._copy(self.items)
        out.image_size = (int(h), int(w))
        out._validate_against_size()
        return out

    def _copy(self, items, image_size=None) -> Regions:
        out = Regions.__new__(Regions)
        out.items, out.image_size = list(items), image_size if image_size is not None else self.image_size
        out.out_of_bounds, out.where, out.num_clipped = self.out_of_bounds, self.where, self.num_clipped
        return out

    def _need_size(self) -> tuple[int, int]:
        if self.image_size is None:
            raise DataError(f"{self.where}: image size unknown; call with_image_size(h, w) first")
        return self.image_size

    # -- access -----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx) -> Regions:
        idx = [idx] if isinstance(idx, int) else idx
        return self._copy([self.items[i] for i in (range(len(self))[idx] if isinstance(idx, slice) else idx)])

    @property
    def kinds(self) -> list[str]:
        return [k for k, _ in self.items]

    def __repr__(self) -> str:
        return f"Regions({len(self)}, kinds={self.kinds}, image_size={self.image_size})"

    def to_rles(self) -> list[dict]:
        """Compressed RLE per region (pycocotools), at the current image size."""
        from pycocotools import mask as mask_utils

        h, w = self._need_size()
        out = []
        for kind, data in self.items:
            if kind == BOX:
                x0, y0, x1, y1 = data
                out.append(mask_utils.frPyObjects(np.array([[x0, y0, x1 - x0, y1 - y0]]), h, w)[0])
            elif kind == POLYGON:
                out.append(mask_utils.merge(mask_utils.frPyObjects([p.tolist() for p in data], h, w)))
            elif kind == RLE:
                out.append(data)
            else:
                out.append(mask_utils.encode(np.asfortranarray(data.astype(np.uint8))))
        return out

    def to_masks(self, h: int | None = None, w: int | None = None) -> np.ndarray:
        """R×H×W bool masks. ``(h, w)`` defaults to the image size; if given and different, the regions are
        first resized to it (boxes and polygons exactly, RLE and masks by nearest neighbour)."""
        if h is not None and w is not None and self.image_size is not None and (h, w) != self.image_size:
            return self.resize(h, w).to_masks()
        if h is not None and w is not None and self.image_size is None:
            return self.with_image_size(h, w).to_masks()
        H, W = self._need_size()
        if not self.items:
            return np.zeros((0, H, W), dtype=bool)
        from pycocotools import mask as mask_utils

        # one decode call for all RLEs: H×W×R in Fortran order
        return np.ascontiguousarray(mask_utils.decode(self.to_rles()).transpose(2, 0, 1)).astype(bool)

    def to_boxes(self) -> np.ndarray:
        """R×4 float xyxy: the box itself, a polygon's extreme coordinates, or the tight box of a mask's pixels
        (pycocotools ``toBbox``); an empty mask gives a zero box."""
        out = np.zeros((len(self), 4), dtype=np.float64)
        rle_idx, rles = [], []
        for k, (kind, data) in enumerate(self.items):
            if kind == BOX:
                out[k] = data
            elif kind == POLYGON:
                pts = np.concatenate(data).reshape(-1, 2)
                out[k] = [*pts.min(0), *pts.max(0)]
                if self.image_size is not None:  # rasterisation clips to the image, so does the box
                    h, w = self.image_size
                    out[k] = np.clip(out[k], 0, [w, h, w, h])
            elif kind == RLE:
                rle_idx.append(k)
                rles.append(data)
            else:
                ys, xs = np.nonzero(data)
                if len(xs):
                    out[k] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        if rles:
            from pycocotools import mask as mask_utils

            xywh = mask_utils.toBbox(rles).reshape(-1, 4)
            out[rle_idx, :2], out[rle_idx, 2:] = xywh[:, :2], xywh[:, :2] + xywh[:, 2:]
        return out

    # -- geometric transforms (each returns a new Regions in the new frame) -------------------------------------
    def _map(self, box_fn, pts_fn, mask_fn, new_size) -> Regions:
        items = []
        for kind, data in self.items:
            if kind == BOX:
                items.append((BOX, box_fn(data)))
            elif kind == POLYGON:
                items.append((POLYGON, [pts_fn(p.reshape(-1, 2)).ravel() for p in data]))
            else:
                m = rle_to_mask(data) if kind == RLE else data
                items.append((MASK, mask_fn(m)))
        return self._copy(items, new_size)

    def resize(self, h: int, w: int) -> Regions:
        """Scale to an image resized to h×w (x·w/W, y·h/H)."""
        H, W = self._need_size()
        s = np.array([w / W, h / H])
        return self._map(lambda b: b * np.tile(s, 2), lambda p: p * s,
                         lambda m: resize_mask_nearest(m, h, w), (h, w))

    def crop(self, x0: int, y0: int, x1: int, y1: int) -> Regions:
        """Keep the window [x0, x1) × [y0, y1) (integers). Boxes are clipped to it; a region that falls outside
        keeps its index (``<regionK>`` must stay valid) with an empty mask and a zero box."""
        self._need_size()
        x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)
        w, h = x1 - x0, y1 - y0
        if w <= 0 or h <= 0:
            raise DataError(f"{self.where}: empty crop window {(x0, y0, x1, y1)}")
        off = np.array([x0, y0])

        def crop_box(b):
            c = np.clip(b - np.tile(off, 2), 0, [w, h, w, h])
            return c if (c[2] > c[0] and c[3] > c[1]) else None

        def crop_mask(m):
            out = np.zeros((h, w), dtype=bool)
            H, W = m.shape
            sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y1, H), min(x1, W)
            if sy1 > sy0 and sx1 > sx0:
                out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = m[sy0:sy1, sx0:sx1]
            return out

        items = []
        for kind, data in self.items:
            if kind == BOX:
                b = crop_box(data)
                # a box that left the window is kept as an empty mask so indices stay stable
                items.append((BOX, b) if b is not None else (MASK, np.zeros((h, w), dtype=bool)))
            elif kind == POLYGON:
                items.append((POLYGON, [(p.reshape(-1, 2) - off).ravel() for p in data]))
            else:
                items.append((MASK, crop_mask(rle_to_mask(data) if kind == RLE else data)))
        return self._copy(items, (h, w))

    def pad(self, left: int = 0, top: int = 0, right: int = 0, bottom: int = 0) -> Regions:
        """Add borders (as an image padded with ``left``/``top``/... pixels): a crop with a negative origin."""
        H, W = self._need_size()
        return self.crop(-left, -top, W + right, H + bottom)


def region_from_dict(region: Any, where: str = "region") -> tuple[str, Any]:
    """A region dict of the conversation jsonl and the benchmark files → a ``(kind, data)`` item:
    ``{"bbox": [x, y, w, h]}`` (COCO xywh), ``{"bbox_xyxy": [...]}``, ``{"segmentation": polygons | RLE}`` or
    ``{"rle": RLE}``; a dict holding both a segmentation and a bbox uses the segmentation. (A user's other forms,
    ``{"box": xyxy}`` and ``{"mask": ...}`` among them: `regionvlm.data.region_input.parse_region`.)"""
    if not isinstance(region, dict):
        raise DataError(f"{where}: expected a region dict, got {type(region).__name__}")
    if "segmentation" in region:
        seg = region["segmentation"]
        return (POLYGON if isinstance(seg, list) else RLE), seg
    if "rle" in region:
        return RLE, region["rle"]
    if "bbox" in region:
        b = _as_box(region["bbox"], f"{where}.bbox")
        return BOX, [b[0], b[1], b[0] + b[2], b[1] + b[3]]
    if "bbox_xyxy" in region:
        return BOX, region["bbox_xyxy"]
    raise DataError(f"{where}: expected 'bbox', 'bbox_xyxy', 'segmentation' or 'rle'")


def _shoelace(flat: np.ndarray) -> float:
    """Area of a polygon given as flat [x1, y1, x2, y2, ...]."""
    x, y = flat[0::2], flat[1::2]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _as_box(data: Any, where: str) -> np.ndarray:
    try:
        box = np.asarray(data, dtype=np.float64).reshape(4)
    except (ValueError, TypeError):
        raise DataError(f"{where}: expected 4 numbers, got {data!r}") from None
    if not np.isfinite(box).all():
        raise DataError(f"{where}: non-finite box {box.tolist()}")
    return box

