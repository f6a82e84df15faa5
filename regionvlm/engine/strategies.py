"""``trainer.strategy`` nodes → Lightning strategies (Lightning owns distribution; this only translates YAML).

A strategy is a Lightning name (``auto``, ``ddp``, ``fsdp``, ``deepspeed_stage_3``, ...) or a node whose
options a plain name cannot carry:

```yaml
trainer:
  strategy:
    type: fsdp
    wrap: [transformers.models.llama.modeling_llama.LlamaDecoderLayer]   # the FSDP unit: one decoder layer
    activation_checkpointing: true     # true: the wrap classes; or a list of classes
    cpu_offload: false
    sharding_strategy: FULL_SHARD      # FULL_SHARD | SHARD_GRAD_OP | HYBRID_SHARD | NO_SHARD
  # or
  strategy: {type: deepspeed, stage: 3, offload_optimizer: false, offload_parameters: false}
```

Classes are full import paths (explicit, no guessing from model names). Other keys go to Lightning's
``FSDPStrategy`` / ``DeepSpeedStrategy`` as they are; a missing ``deepspeed`` package is a `ConfigError`.
"""

from __future__ import annotations

import importlib
from importlib.util import find_spec
from typing import Any

from regionvlm.errors import ConfigError
from regionvlm.registry import checked_kwargs, construct, to_plain

KEY = "trainer.strategy"


def strategy_name(node: Any) -> str:
    """The Lightning-style name of a strategy node, as `regionvlm plan` reads it (``fsdp``,
    ``deepspeed_stage_3``, ``deepspeed_stage_3_offload``, or the plain name given)."""
    node = to_plain(node)
    if not isinstance(node, dict):
        return str(node if node is not None else "auto")
    kind = str(node.get("type"))
    if kind == "deepspeed":
        offload = node.get("offload_optimizer") or node.get("offload_parameters")
        return f"deepspeed_stage_{int(node.get('stage', 2))}" + ("_offload" if offload else "")
    return kind


def _class(path: Any, key: str) -> type:
    module, _, name = str(path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"{key}: no class {path!r} (give a full import path, e.g. "
                          "transformers.models.llama.modeling_llama.LlamaDecoderLayer)") from None


def _strategy_arguments(node: dict) -> tuple[type, dict, dict]:
    """``(Lightning strategy class, its keyword arguments, checking options)`` for a strategy node: the
    translation both `check_strategy` and `build_strategy` use."""
    node = dict(node)
    kind = node.pop("type", None)
    if kind == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrap = {_class(c, f"{KEY}.wrap") for c in node.pop("wrap", []) or []}
        ac = node.pop("activation_checkpointing", False)
        ac_classes = wrap if ac is True else {_class(c, f"{KEY}.activation_checkpointing") for c in ac or []}
        if ac is True and not wrap:
            raise ConfigError(f"{KEY}.activation_checkpointing: true needs 'wrap' classes (or list the classes)")
        runtime = {"auto_wrap_policy": wrap or None, "activation_checkpointing_policy": ac_classes or None}
        # FSDPStrategy hands its other keyword arguments to torch's FullyShardedDataParallel (use_orig_params, ...)
        return FSDPStrategy, {"cpu_offload": bool(node.pop("cpu_offload", False)), **node}, \
            {"what": "FSDP strategy", "runtime": runtime, "forwards_to": FullyShardedDataParallel}
    if kind == "deepspeed":
        from lightning.pytorch.strategies import DeepSpeedStrategy

        return DeepSpeedStrategy, node, {"what": "DeepSpeed strategy", "runtime": {}}
    raise ConfigError(f"{KEY}.type: expected fsdp or deepspeed (or give a Lightning strategy name), got {kind!r}")


def check_strategy(node: Any) -> None:
    """Check a strategy node's keys as `build_strategy` would, without building it (``regionvlm config``)."""
    node = to_plain(node)
    if isinstance(node, dict):
        cls, kwargs, options = _strategy_arguments(node)
        checked_kwargs(cls, kwargs, key_path=KEY, require=False, **options)


def build_strategy(node: Any) -> Any:
    """A Lightning strategy object for a node, or the name itself for a plain name."""
    node = to_plain(node)
    if not isinstance(node, dict):
        return node
    cls, kwargs, options = _strategy_arguments(node)
    if cls.__name__ == "DeepSpeedStrategy" and find_spec("deepspeed") is None:
        raise ConfigError(f"{KEY}: the deepspeed strategy needs the 'deepspeed' package, which is not installed "
                          "(pip install deepspeed)")
    runtime = options.pop("runtime")
    return construct(cls, kwargs, key_path=KEY, **options, **runtime)
