"""A user's region, in every form it arrives, → one `Regions` item; one parser for the command line, Python,
``serve`` and ``predict`` files, with one rule for masks.

Forms (`parse_region`):
- a string, as the command line writes it: ``box:x1,y1,x2,y2`` | ``polygon:x1,y1,x2,y2,...`` |
  ``mask:PATH.png`` | ``rle:PATH.json`` (COCO RLE);
- Python values: an xyxy box (4 numbers), polygons (``[[x1, y1, ...], ...]``), an H×W array or tensor (a mask),
  a PIL image (a mask picture), a COCO RLE dict (``{"size": [h, w], "counts": ...}``);
- a dict as region files and the API write it: ``{"box": xyxy}``, ``{"mask": PATH | array | picture}`` and the
  dataset forms of `regionvlm.data.structures.region_from_dict` (``bbox`` xywh, ``bbox_xyxy``,
  ``segmentation``, ``rle``).

The mask rule (`mask_from_picture`, `mask_from_array`): **non-zero = inside**; a picture with an alpha channel
(RGBA, LA, a palette with transparency) is its alpha: a transparent background is outside whatever colour it
hides. A 0/1 PNG is therefore the same mask as a 0/255 one. Files are read only when they are regular files
below `MAX_REGION_FILE_BYTES` (a FIFO or ``/dev/zero`` is refused, not read).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from regionvlm.data.structures import BOX, MASK, POLYGON, RLE, Regions, region_from_dict
from regionvlm.errors import DataError

KINDS = (BOX, MASK, POLYGON, RLE)
MAX_REGION_FILE_BYTES = 64 << 20  # a mask PNG or RLE JSON larger than this is refused before it is read


def mask_from_array(array: Any, where: str = "mask") -> np.ndarray:
    """An H×W (or H×W×C) array → H×W bool: non-zero (in any channel) = inside."""
    arr = np.asarray(array)
    if arr.ndim == 3:
        arr = arr.any(axis=2)
    if arr.ndim != 2:
        raise DataError(f"{where}: a mask must be H×W, got shape {arr.shape}")
    return arr != 0


def mask_from_picture(picture: Any, where: str = "mask") -> np.ndarray:
    """A PIL image → H×W bool: its alpha > 0 when it has an alpha channel, else non-zero in any channel."""
    if picture.mode == "P":
        picture = picture.convert("RGBA" if "transparency" in picture.info else "RGB")
    if picture.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        return np.asarray(picture.getchannel("A")) > 0
    return mask_from_array(np.asarray(picture), where)


def read_region_file(path: str | os.PathLike, where: str) -> bytes:
    """The bytes of a mask or RLE file: a regular file of at most `MAX_REGION_FILE_BYTES`, else one line. Opened
    without blocking and judged on what was opened (``fstat``), so a FIFO swapped in after a check cannot hang."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise DataError(f"{where}: cannot read '{path}': {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_REGION_FILE_BYTES:
        os.close(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{where}: '{path}' is not a regular file")
        raise DataError(f"{where}: '{path}' is {st.st_size} bytes, over the limit of {MAX_REGION_FILE_BYTES}")
    with os.fdopen(fd, "rb") as f:
        return f.read(MAX_REGION_FILE_BYTES + 1)


def read_mask_file(path: str | os.PathLike, where: str) -> np.ndarray:
    """A mask picture (PNG, …) → H×W bool by the mask rule; refused beyond PIL's pixel limit."""
    import io
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    data = read_region_file(path, where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(data))
        if picture.width * picture.height > (Image.MAX_IMAGE_PIXELS or float("inf")):
            raise DataError(f"{where}: mask '{path}' of {picture.width}×{picture.height} pixels is over the limit of "
                            f"{Image.MAX_IMAGE_PIXELS} (PIL.Image.MAX_IMAGE_PIXELS)")
        picture.load()
        return mask_from_picture(ImageOps.exif_transpose(picture), where)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{where}: cannot decode mask '{path}': {exc}") from None


def _numbers(text: str, where: str, spec: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise DataError(f"{where} {spec!r}: expected comma-separated numbers") from None


def parse_region_spec(spec: str, where: str = "--region") -> tuple[str, Any]:
    """``box:…`` | ``polygon:…`` | ``mask:PATH`` | ``rle:PATH`` → a `Regions` item."""
    kind, sep, value = spec.partition(":")
    if not sep or kind not in KINDS:
        raise DataError(f"{where} {spec!r}: expected box:x1,y1,x2,y2 | mask:PATH | polygon:x,y,... | rle:PATH")
    if kind == BOX:
        box = _numbers(value, where, spec)
        if len(box) != 4:
            raise DataError(f"{where} {spec!r}: a box needs 4 numbers x1,y1,x2,y2")
        return BOX, np.asarray(box, dtype=np.float64)
    if kind == POLYGON:
        return POLYGON, [_numbers(value, where, spec)]
    if kind == MASK:
        return MASK, read_mask_file(value, f"{where} {spec!r}")
    try:
        rle = json.loads(read_region_file(value, f"{where} {spec!r}"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{where} {spec!r}: not a JSON file: {exc}") from None
    return parse_region(rle, f"{where} {spec!r}")


def parse_region(region: Any, where: str = "region") -> tuple[str, Any]:
    """One user region (any form of the module docstring, or an item already parsed) → a ``(kind, data)`` item
    of `Regions`."""
    if isinstance(region, tuple) and len(region) == 2 and isinstance(region[0], str) and region[0] in KINDS:
        return region
    if isinstance(region, str):
        return parse_region_spec(region, where)
    if isinstance(region, dict):
        if "size" in region and "counts" in region:
            return RLE, region
        if "mask" in region:
            mask = region["mask"]
            if isinstance(mask, (str, os.PathLike)):
                return MASK, read_mask_file(mask, f"{where}.mask")
            return parse_region(mask, f"{where}.mask")
        if "box" in region:
            return BOX, region["box"]
        return region_from_dict(region, where)
    if hasattr(region, "getchannel"):  # a PIL image: a mask picture
        return MASK, mask_from_picture(region, where)
    arr = region if isinstance(region, np.ndarray) else None
    if arr is None and hasattr(region, "detach"):  # torch tensors
        arr = region.detach().cpu().numpy()
    if arr is not None and arr.ndim >= 2:
        return MASK, mask_from_array(arr, where)
    if isinstance(region, (list, tuple)) and region and all(isinstance(p, (list, tuple, np.ndarray)) for p in region):
        return POLYGON, [list(map(float, p)) for p in region]
    try:
        flat = np.asarray(region, dtype=np.float64).reshape(-1)
    except (ValueError, TypeError):
        flat = None
    if flat is not None and flat.size == 4:
        return BOX, flat
    raise DataError(f"{where}: expected an xyxy box (4 numbers), an H×W mask, polygons, COCO RLE or a "
                    f"box:/mask:/polygon:/rle: string")


def parse_regions(regions: Any, where: str = "regions") -> Regions:
    """A sequence of user regions (or a `Regions`) → `Regions`."""
    if isinstance(regions, Regions):
        return regions
    return Regions([parse_region(r, f"{where}[{i}]") for i, r in enumerate(regions or [])], where=where)
