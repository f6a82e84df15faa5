"""Which parameters train, their groups, the optimizer (a config node) and the warmup + decay schedule.

Parameter selectors (``model.trainable``, ``model.freeze``, the keys of ``optim.lr_multipliers``) are component
names (``llm``) or glob patterns over parameter names (``llm.*.lora_*``, ``vision_encoder.*.layers.2[0-3].*``);
a pattern also selects every parameter below a module it names (``vision_encoder.model.*.layers.3`` selects
that layer's weights). A component name is always valid (RGPT's mask pooling has no parameters, yet a recipe
may list it as trainable); any other selector that matches no parameter is an error naming it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from regionvlm.errors import ConfigError
from regionvlm.registry import OPTIMIZERS, to_plain

# Optimizers by name: ``optim.optimizer: {type: adamw, betas: [0.9, 0.95]}``. A custom optimizer registers itself
# (``@OPTIMIZERS.register("lion")`` in a module listed under ``imports:``); it receives the parameter groups
# as ``params`` and the base learning rate as ``lr``.
for _name, _cls in (("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD),
                    ("rmsprop", torch.optim.RMSprop), ("adagrad", torch.optim.Adagrad),
                    ("nadam", torch.optim.NAdam), ("radam", torch.optim.RAdam)):
    OPTIMIZERS.register(_name)(_cls)


def selects(name: str, selector: str) -> bool:
    """Whether the parameter ``name`` is selected by ``selector`` (a component name or a glob pattern)."""
    return fnmatchcase(name, selector) or fnmatchcase(name, selector + ".*")


def _check_selector(model: nn.Module, selector: Any, key_path: str) -> str:
    """``selector`` itself, once checked to be a string that selects at least one parameter of ``model``."""
    if not isinstance(selector, str):
        raise ConfigError(f"{key_path}: expected a component name or a glob pattern, got {selector!r}")
    components = [n for n, _ in model.named_children()]
    if selector not in components and not any(selects(n, selector) for n, _ in model.named_parameters()):
        components = ", ".join(components)
        raise ConfigError(f"{key_path}: '{selector}' matches no parameter (neither a component nor a glob "
                          f"pattern over parameter names); components: {components}")
    return selector


def apply_trainable(model: nn.Module, trainable: Iterable[str] | None = None,
                    freeze: Iterable[str] | None = None) -> dict[str, int]:
    """Set ``requires_grad`` per parameter. ``trainable`` lists what trains (everything else freezes); ``freeze``
    lists what freezes (everything else trains). Returns the number of trainable parameters per component."""
    if trainable is not None and freeze is not None:
        raise ConfigError("model: set either 'trainable' or 'freeze', not both")
    key = "model.trainable" if trainable is not None else "model.freeze"
    listed = [_check_selector(model, s, f"{key}[{i}]")
              for i, s in enumerate(trainable if trainable is not None else (freeze or []))]
    for name, param in model.named_parameters():
        hit = any(selects(name, s) for s in listed)
        param.requires_grad_(hit if trainable is not None else not hit)
    return {name: sum(p.numel() for p in child.parameters() if p.requires_grad)
            for name, child in model.named_children()}


def parameter_groups(model: nn.Module, lr: float, weight_decay: float,
                     lr_multipliers: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """One group per (component, multiplier selector, decay/no-decay) over the trainable parameters; biases and
    norm weights (ndim < 2) get no weight decay. A parameter matched by several ``lr_multipliers`` selectors takes
    the longest (most specific) one."""
    lr_multipliers = dict(lr_multipliers or {})
    for selector in lr_multipliers:
        _check_selector(model, selector, f"optim.lr_multipliers.{selector}")
    by_key: dict[tuple[str, str | None, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        matched = [s for s in lr_multipliers if selects(name, s)]
        selector = max(matched, key=len) if matched else None
        by_key.setdefault((name.split(".", 1)[0], selector, param.ndim >= 2), []).append(param)
    groups = []
    for (component, selector, decays), params in by_key.items():
        label = component if selector in (None, component) else f"{component}[{selector}]"
        groups.append({"params": params, "lr": lr * lr_multipliers.get(selector, 1.0),
                       "weight_decay": weight_decay if decays else 0.0, "name": label})
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
    """The ``optim.optimizer`` node (default AdamW) over the trainable parameter groups and a per-step LambdaLR,
    in Lightning's format. ``lr`` and ``weight_decay`` are set by ``optim.lr`` / ``optim.weight_decay`` (per group),
    never inside the node."""
    groups = parameter_groups(model, optim_cfg.lr, optim_cfg.weight_decay, optim_cfg.lr_multipliers)
    if not groups:
        raise ConfigError("model.trainable: no trainable parameters (every component is frozen)")
    node = to_plain(optim_cfg.optimizer)
    node = {"type": node} if isinstance(node, str) else dict(node or {"type": "adamw"})
    for key in ("lr", "weight_decay"):
        if key in node:
            raise ConfigError(f"optim.optimizer.{key}: set optim.{key} instead (it is applied per parameter group)")
    optimizer = OPTIMIZERS.build(node, key_path="optim.optimizer", params=groups, lr=optim_cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total_steps, optim_cfg.warmup_ratio, optim_cfg.schedule, optim_cfg.min_lr_ratio))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

