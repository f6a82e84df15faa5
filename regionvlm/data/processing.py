"""Image processing for the vision encoder, with the sample's regions transformed in the same step.

The image and its regions go through one geometric transform (pad to square, then resize to S×S; or a plain
resize), so the masks the region extractor pools are aligned with the pixels the encoder sees by construction.
Regions are transformed in their own form (polygons and boxes exactly) and rasterised once at S×S.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from regionvlm.data.structures import Regions
from regionvlm.errors import DataError
from regionvlm.image_stats import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


def image_under_root(root: str | os.PathLike, name: str, where: str, allow_absolute: bool = False) -> str:
    """``root/name``, refusing a ``name`` that leads out of ``root`` (``../``, or an absolute path unless
    ``allow_absolute``): an annotation file from elsewhere must not make regionvlm read arbitrary files. Judged
    on the path as written, so a data root that is itself a symlink, or holds symlinks, keeps working."""
    name = os.fspath(name)
    if os.path.isabs(name):
        if allow_absolute:
            return name
        raise DataError(f"{where}: image path {name!r} is absolute; it must be relative to the image root {root}")
    if os.path.normpath(name).split(os.sep)[0] == os.pardir:
        raise DataError(f"{where}: image path {name!r} leads out of the image root {root}")
    return os.path.join(root, name)


def load_image(image: Any, where: str = "image"):
    """A path, PIL image or H×W(×C) uint8 array → RGB PIL image, EXIF orientation applied.

    Grayscale (8 or 16 bits), palette (with or without transparency) and RGBA images become RGB; transparency is
    composited on white, as a viewer would show it (converting RGBA straight to RGB exposes hidden colours).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(image, (str, os.PathLike)):
        try:
            with warnings.catch_warnings():  # PIL warns between 1× and 2× its limit: refused below, one line
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(image)
            with im:
                # a decompression bomb: a small file that decodes to gigabytes; the header already tells
                if im.width * im.height > (Image.MAX_IMAGE_PIXELS or float("inf")):
                    raise DataError(f"{image}: image of {im.width}×{im.height} pixels is over the limit of "
                                    f"{Image.MAX_IMAGE_PIXELS} (PIL.Image.MAX_IMAGE_PIXELS); refused as a "
                                    f"possible decompression bomb")
                im.load()
                image = ImageOps.exif_transpose(im)  # always a new image, valid after close
        except FileNotFoundError:
            raise DataError(f"{image}: image file not found") from None
        except Image.DecompressionBombError as exc:  # PIL's own refusal, from twice the limit up, at open
            raise DataError(f"{image}: refused as a possible decompression bomb: {exc}") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise DataError(f"{image}: cannot decode image: {exc}") from None
    elif isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            raise DataError(f"{where}: array image must be uint8, got {arr.dtype}")
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise DataError(f"{where}: array image must be H×W, H×W×3 or H×W×4, got shape {arr.shape}")
        image = Image.fromarray(arr)
    elif isinstance(image, Image.Image):
        image = ImageOps.exif_transpose(image)
    else:
        raise DataError(f"{where}: expected a path, PIL image or array, got {type(image).__name__}")
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit grayscale (PNG/TIFF): scale to 8 bits; a plain convert would clip everything above 255 to white
        arr = np.asarray(image).astype(np.float64) * (255.0 / 65535.0)
        image = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        bg = Image.new("RGB", image.size, (255, 255, 255))
        bg.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        image = bg
    elif image.mode != "RGB":
        image = image.convert("RGB")
    return image


class ImageProcessor:
    """Turns an image and its `Regions` into ``pixel_values`` (3×S×S, normalised), ``region_masks`` (R×S×S
    bool: a quarter of float32's bytes until the region extractor resizes them) and ``region_boxes`` (R×4 xyxy in
    processed pixels). The image part of `regionvlm.processor.RegionProcessor`.

    ``resize_mode="pad"`` pads the image to a square with the mean colour (centred, as LLaVA's
    ``expand2square``) before resizing, so shapes keep their aspect ratio; ``"resize"`` stretches to S×S.
    ``image=None`` (a text-only sample) gives zero pixels and no regions.
    """

    def __init__(self, image_size: int, mean: Sequence[float] = OPENAI_CLIP_MEAN,
                 std: Sequence[float] = OPENAI_CLIP_STD, resize_mode: str = "pad"):
        if resize_mode not in ("pad", "resize"):
            raise DataError(f"resize_mode: expected 'pad' or 'resize', got {resize_mode!r}")
        self.image_size = int(image_size)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.resize_mode = resize_mode

    def __repr__(self) -> str:
        return f"ImageProcessor(image_size={self.image_size}, resize_mode={self.resize_mode!r})"

    def __call__(self, image: Any, regions: Regions | None = None, where: str = "image") -> dict[str, torch.Tensor]:
        from PIL import Image

        S = self.image_size
        regions = regions if regions is not None else Regions()
        if image is None:
            if len(regions):
                raise DataError(f"{where}: sample has {len(regions)} regions but no image")
            return {"pixel_values": torch.zeros(3, S, S), "region_masks": torch.zeros(0, S, S, dtype=torch.bool),
                    "region_boxes": torch.zeros(0, 4)}
        source = f"{where} ({image})" if isinstance(image, (str, os.PathLike)) else where
        image = load_image(image, where)
        w, h = image.size
        regions = regions.with_image_size(h, w)
        if self.resize_mode == "pad" and w != h:
            side = max(w, h)
            limit = Image.MAX_IMAGE_PIXELS or float("inf")
            if side * side > limit:  # a 100000×1 image is small, its padded square is not
                raise DataError(f"{source}: image of {w}×{h} pixels pads to a {side}×{side} square, over the limit of "
                                f"{limit} pixels (PIL.Image.MAX_IMAGE_PIXELS)")
            left, top = (side - w) // 2, (side - h) // 2
            fill = tuple(int(round(c * 255)) for c in self.mean)
            canvas = Image.new("RGB", (side, side), fill)
            canvas.paste(image, (left, top))
            image = canvas
            regions = regions.pad(left, top, side - w - left, side - h - top)
        if image.size != (S, S):
            image = image.resize((S, S), Image.BICUBIC)
        arr = np.asarray(image, dtype=np.float32) / 255.0
        arr = (arr - self.mean) / self.std
        pixel_values = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        regions = regions.resize(S, S) if regions.image_size != (S, S) else regions
        masks = torch.from_numpy(regions.to_masks())
        boxes = torch.from_numpy(regions.to_boxes()).float()
        return {"pixel_values": pixel_values, "region_masks": masks, "region_boxes": boxes}

    def process_sample(self, sample: dict) -> dict:
        """A raw dataset sample → the same dict with ``pixel_values``, ``region_masks``, ``region_boxes`` added
        (``image`` and ``regions`` removed). Runs in DataLoader workers."""
        out = {k: v for k, v in sample.items() if k not in ("image", "regions")}
        out.update(self(sample.get("image"), sample.get("regions"), where=f"sample {sample.get('id', '?')}"))
        return out
