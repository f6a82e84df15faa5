"""Region extractors: one feature (or k features) per region from the refined feature map.

Contract: built with runtime ``in_channels`` (C of the map) and ``image_size`` (S, the processed image side);
``forward(features B×C×H×W, masks R×S×S bool (or float in [0, 1]), boxes R×4 xyxy in image pixels,
image_index R long) → R×k×C_out``; attributes ``out_channels`` (C_out) and ``tokens_per_region`` (k). R may be 0.
All regions of the batch are computed together: no Python loop over regions, and a region never indexes a
copy of its image's C×H×W map.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from regionvlm.errors import ConfigError
from regionvlm.registry import REGION_EXTRACTORS


def resize_masks(masks: torch.Tensor, size: tuple[int, int], mode: str = "area") -> torch.Tensor:
    """R×S×S (bool or float) → R×H×W float (in the map's dtype when called with ``masks.type_as(features)``).
    ``bilinear`` is what SpatialRGPT's ``MaskPooling`` does (the RGPT recipe's setting);
    ``area`` keeps each cell's covered fraction (a small mask keeps a small weight), the named variant."""
    if masks.shape[-2:] == tuple(size):
        return masks
    x = masks[:, None]
    if mode == "area":
        x = F.adaptive_avg_pool2d(x, size)
    elif mode == "bilinear":
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    else:
        raise ConfigError(f"model.region_extractor.mask_resize: expected 'area' or 'bilinear', got '{mode}'")
    return x[:, 0]


def grouped_mask_pool(features: torch.Tensor, weights: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
    """Σ_hw weights[r, hw] · features[image_index[r], :, hw] for every region r, as ONE batched matmul.

    Regions are scattered into a B×R_max×HW weight tensor (R_max = most regions of one image), multiplied by
    the B×HW×C features with one ``bmm``, and gathered back in the regions' order.
    """
    b = features.shape[0]
    r = weights.shape[0]
    counts = torch.bincount(image_index, minlength=b)
    r_max = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    order = torch.argsort(image_index, stable=True)
    slot = torch.empty_like(image_index)
    slot[order] = torch.arange(r, device=image_index.device) - starts[image_index[order]]
    padded = weights.new_zeros(b, r_max, weights.shape[1])
    padded[image_index, slot] = weights
    pooled = torch.bmm(padded, features.flatten(2).transpose(1, 2))  # B×R_max×C
    return pooled[image_index, slot]


def box_centre_features(features: torch.Tensor, boxes: torch.Tensor, image_index: torch.Tensor,
                        image_hw: tuple[int, int]) -> torch.Tensor:
    """The feature at each box's centre cell (R×C): the fallback of a mask that vanishes on the grid."""
    h, w = features.shape[-2:]
    cx = ((boxes[:, 0] + boxes[:, 2]) * 0.5 * (w / image_hw[1])).floor().long().clamp(0, w - 1)
    cy = ((boxes[:, 1] + boxes[:, 3]) * 0.5 * (h / image_hw[0])).floor().long().clamp(0, h - 1)
    return features[image_index, :, cy, cx]


def mask_geometry(masks: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Each mask cropped to its box and resized to size×size (R×size²), vectorised with ``roi_align``."""
    from torchvision.ops import roi_align

    rois = torch.cat([torch.arange(masks.shape[0], device=masks.device, dtype=boxes.dtype)[:, None], boxes], 1)
    crops = roi_align(masks[:, None].float(), rois.float(), output_size=size, spatial_scale=1.0,
                      sampling_ratio=0, aligned=True)
    return crops.flatten(1)


@REGION_EXTRACTORS.register("mask_pool")
class MaskPool(nn.Module):
    """RGPT mask pooling: mask-weighted mean of the refined map, optionally + an Osprey-style mask-shape embedding.

    Options: ``mask_resize`` (``area`` | ``bilinear``: how masks reach the map's grid; the RGPT recipe sets
    ``bilinear`` as SpatialRGPT's pooling, ``area`` is the variant), ``geometry`` (null |
    ``add`` | ``token``: the mask cropped to its box, ``geometry_size``² through an MLP, added to the pooled
    feature or emitted as a second region token), ``geometry_size`` (16), ``geometry_hidden`` (256),
    ``geometry_box`` (also feed the normalised box xyxy to the MLP; default false).
    A mask that vanishes on the grid yields the feature at its box centre, never NaN.
    """

    def __init__(self, in_channels: int, image_size: int | None = None, mask_resize: str = "area",
                 geometry: str | None = None, geometry_size: int = 16, geometry_hidden: int = 256,
                 geometry_box: bool = False, eps: float = 1e-6):
        super().__init__()
        if mask_resize not in ("area", "bilinear"):
            raise ConfigError(f"model.region_extractor.mask_resize: expected 'area' or 'bilinear', got '{mask_resize}'")
        if geometry not in (None, "add", "token"):
            raise ConfigError(f"model.region_extractor.geometry: expected null, 'add' or 'token', got '{geometry}'")
        self.in_channels = self.out_channels = in_channels
        self.image_size = image_size
        self.mask_resize = mask_resize
        self.geometry = geometry
        self.geometry_size = geometry_size
        self.geometry_box = geometry_box
        self.eps = eps
        self.tokens_per_region = 2 if geometry == "token" else 1
        if geometry is not None:
            n_in = geometry_size * geometry_size + (4 if geometry_box else 0)
            self.geometry_mlp = nn.Sequential(nn.Linear(n_in, geometry_hidden), nn.GELU(),
                                              nn.Linear(geometry_hidden, in_channels))

    def forward(self, features: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor,
                image_index: torch.Tensor) -> torch.Tensor:
        r = masks.shape[0]
        c = features.shape[1]
        if r == 0:
            return features.new_zeros(0, self.tokens_per_region, c)
        weights = resize_masks(masks.type_as(features), features.shape[-2:], self.mask_resize).flatten(1)
        total = weights.sum(1, keepdim=True)
        pooled = grouped_mask_pool(features, weights, image_index) / total.clamp_min(self.eps)
        centre = box_centre_features(features, boxes, image_index, masks.shape[-2:])
        pooled = torch.where(total > self.eps, pooled, centre)
        if self.geometry is None:
            return pooled[:, None]
        geo_in = mask_geometry(masks, boxes, self.geometry_size)
        if self.geometry_box:
            s = masks.shape[-1]
            geo_in = torch.cat([geo_in, boxes.float() / s], 1)
        geo = self.geometry_mlp(geo_in.type_as(features))
        if self.geometry == "add":
            return (pooled + geo)[:, None]
        return torch.stack([pooled, geo], 1)


@REGION_EXTRACTORS.register("roi_align")
class RoIAlignExtractor(nn.Module):
    """Box-based RoIAlign on the refined map (GPT4RoI-style), the mask is not used.

    Options: ``output_size`` (p, default 7), ``pool`` (``mean``: one C token; ``tokens``: p² C tokens;
    ``flatten``: one C·p² token), ``sampling_ratio`` (2), ``aligned`` (true).
    """

    def __init__(self, in_channels: int, image_size: int | None = None, output_size: int = 7,
                 pool: str = "mean", sampling_ratio: int = 2, aligned: bool = True):
        super().__init__()
        if pool not in ("mean", "tokens", "flatten"):
            raise ConfigError(f"model.region_extractor.pool: expected 'mean', 'tokens' or 'flatten', got '{pool}'")
        self.image_size = image_size
        self.output_size = output_size
        self.pool = pool
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.in_channels = in_channels
        self.out_channels = in_channels * output_size * output_size if pool == "flatten" else in_channels
        self.tokens_per_region = output_size * output_size if pool == "tokens" else 1

    def forward(self, features: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor,
                image_index: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import roi_align

        r = boxes.shape[0]
        if r == 0:
            return features.new_zeros(0, self.tokens_per_region, self.out_channels)
        image_w = self.image_size or masks.shape[-1]
        rois = torch.cat([image_index[:, None].type_as(boxes), boxes], 1).type_as(features)
        crops = roi_align(features, rois, output_size=self.output_size,
                          spatial_scale=features.shape[-1] / image_w,
                          sampling_ratio=self.sampling_ratio, aligned=self.aligned)  # R×C×p×p
        if self.pool == "mean":
            return crops.mean((2, 3))[:, None]
        if self.pool == "flatten":
            return crops.flatten(1)[:, None]
        return crops.flatten(2).transpose(1, 2)


@REGION_EXTRACTORS.register("zero")
class ZeroExtractor(nn.Module):
    """Zeros for every region: the blind control (the model cannot see which region is asked about)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = self.out_channels = in_channels
        self.tokens_per_region = 1

    def forward(self, features: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor,
                image_index: torch.Tensor) -> torch.Tensor:
        return features.new_zeros(masks.shape[0], 1, features.shape[1])
