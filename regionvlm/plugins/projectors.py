"""Projectors: vision-side features ``...×C`` → LLM embeddings ``...×D``.

Contract: built with runtime ``in_channels`` (C) and ``out_channels`` (D = the LLM's hidden size).
"""

from __future__ import annotations

import torch
from torch import nn

from regionvlm.errors import ConfigError
from regionvlm.registry import PROJECTORS


@PROJECTORS.register("linear")
class LinearProjector(nn.Module):
    """One linear layer (LLaVA v1)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Linear(in_channels, out_channels)
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


@PROJECTORS.register("mlp")
class MLPProjector(nn.Module):
    """MLP of ``depth`` linear layers with GELU between them (LLaVA-1.5's ``mlpNx_gelu``).

    Options: ``depth`` (default 2), ``hidden_channels`` (default = out_channels).
    """

    def __init__(self, in_channels: int, out_channels: int, depth: int = 2, hidden_channels: int | None = None):
        super().__init__()
        if depth < 1:
            raise ConfigError(f"model.projector.depth: must be >= 1, got {depth}")
        hidden = int(hidden_channels or out_channels)
        dims = [in_channels] + [hidden] * (depth - 1) + [out_channels]
        layers: list[nn.Module] = []
        for i in range(depth):
            if i > 0:
                layers.append(nn.GELU())
            layers.append(nn.Linear(dims[i], dims[i + 1]))
        self.layers = nn.Sequential(*layers)
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@PROJECTORS.register("mlp2x_gelu")
class MLP2xGELUProjector(MLPProjector):
    """Two linear layers with a GELU between (LLaVA-1.5 / RGPT's connector)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, depth=2)
