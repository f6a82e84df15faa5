"""Feature refiners: B×C×h×w → B×C'×H×W between the vision encoder and the two branches.

Contract: built with runtime ``in_channels``; attributes ``out_channels`` (C') and ``scale`` (H = scale·h).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from regionvlm.errors import ConfigError
from regionvlm.registry import FEATURE_REFINERS


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a B×C×H×W map (as in SAM / ConvNeXt)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


@FEATURE_REFINERS.register("identity")
class IdentityRefiner(nn.Module):
    """No refinement: the encoder's map goes to both branches unchanged."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.out_channels = in_channels
        self.scale = 1

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


@FEATURE_REFINERS.register("rgpt_deconv")
class RGPTDeconvRefiner(nn.Module):
    """RGPT's spatial-awareness module: ConvTranspose2d(k2,s2) → LayerNorm2d → GELU → … → GELU (2^stages ×).

    Options: ``stages`` (default 2: 4× upsampling, 24×24 → 96×96 for CLIP-L/336), ``width`` (channels of every
    stage; default = ``in_channels``).
    """

    def __init__(self, in_channels: int, stages: int = 2, width: int | None = None):
        super().__init__()
        if stages < 1:
            raise ConfigError(f"model.feature_refiner.stages: must be >= 1, got {stages}")
        width = int(width or in_channels)
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(stages):
            layers.append(nn.ConvTranspose2d(channels, width, kernel_size=2, stride=2))
            if i < stages - 1:
                layers.append(LayerNorm2d(width))
            layers.append(nn.GELU())
            channels = width
        self.layers = nn.Sequential(*layers)
        self.out_channels = width
        self.scale = 2 ** stages

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)
