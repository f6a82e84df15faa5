"""Which parameters train, their groups, AdamW and the warmup + cosine schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from regionvlm.errors import ConfigError


def component_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_children()]


def apply_trainable(model: nn.Module, trainable: Iterable[str] | None = None,
                    freeze: Iterable[str] | None = None) -> dict[str, bool]:
    """Set ``requires_grad`` per top-level component. ``trainable`` lists what trains (everything else freezes);
    ``freeze`` lists what freezes (everything else trains). Names are the model's component attributes."""
    names = component_names(model)
    if trainable is not None and freeze is not None:
        raise ConfigError("model: set either 'trainable' or 'freeze', not both")
    for key, listed in (("trainable", trainable), ("freeze", freeze)):
        for i, name in enumerate(listed or []):
            if name not in names:
                raise ConfigError(f"model.{key}[{i}]: no component '{name}'; components: {', '.join(names)}")
    state = {}
    for name, child in model.named_children():
        trains = name in set(trainable) if trainable is not None else name not in set(freeze or [])
        child.requires_grad_(trains)
        state[name] = trains and any(True for _ in child.parameters())
    return state


def parameter_groups(model: nn.Module, lr: float, weight_decay: float,
                     lr_multipliers: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """One group per (component, decay/no-decay); biases and norm weights (ndim < 2) get no weight decay."""
    lr_multipliers = dict(lr_multipliers or {})
    names = component_names(model)
    for name in lr_multipliers:
        if name not in names:
            raise ConfigError(f"optim.lr_multipliers.{name}: no component '{name}'; components: {', '.join(names)}")
    groups = []
    for name, child in model.named_children():
        params = [p for p in child.parameters() if p.requires_grad]
        scale = lr_multipliers.get(name, 1.0)
        for decay, subset in ((weight_decay, [p for p in params if p.ndim >= 2]),
                              (0.0, [p for p in params if p.ndim < 2])):
            if subset:
                groups.append({"params": subset, "lr": lr * scale, "weight_decay": decay, "name": name})
    return groups


def lr_lambda(total_steps: int, warmup_ratio: float, schedule: str, min_lr_ratio: float = 0.0):
    """Multiplier of the base lr at each optimizer step: linear warmup, then cosine / linear / constant."""
    if schedule not in ("cosine", "linear", "constant"):
        raise ConfigError(f"optim.schedule: unknown schedule '{schedule}'; known: cosine, linear, constant")
    total = max(1, int(total_steps))
    warmup = math.ceil(warmup_ratio * total) if warmup_ratio > 0 else 0

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
        return min_lr_ratio + (1 - min_lr_ratio) * decay

    return f


def build_optimizer(model: nn.Module, optim_cfg: Any, total_steps: int) -> dict[str, Any]:
    """AdamW over the trainable parameter groups and a per-step LambdaLR, in Lightning's format."""
    groups = parameter_groups(model, optim_cfg.lr, optim_cfg.weight_decay, optim_cfg.lr_multipliers)
    if not groups:
        raise ConfigError("model.trainable: no trainable parameters (every component is frozen)")
    optimizer = torch.optim.AdamW(groups, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total_steps, optim_cfg.warmup_ratio, optim_cfg.schedule, optim_cfg.min_lr_ratio))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
