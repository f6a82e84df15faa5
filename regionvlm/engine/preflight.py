"""Checks that run before anything heavy: a full-scale recipe without its weights or data stops at once with
a message naming every missing file, instead of failing after minutes of loading.

Conventions checked: dataset node keys named ``path`` or ending in ``_file`` / ``_root`` are paths; component
nodes with ``pretrained: <str>`` name a local folder or a hub id (a hub id must be in the local cache when the
hub is offline, ``HF_HUB_OFFLINE=1``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from regionvlm.errors import ConfigError

TINY_HINT = "to try regionvlm without downloads, run the tiny preset: make demo (projects/rgpt/tiny)"


def _dataset_paths(data_cfg: dict) -> Iterator[tuple[str, str]]:
    for split in ("train", "val"):
        for i, node in enumerate(data_cfg.get(split) or []):
            if not isinstance(node, dict):
                continue
            for key, value in node.items():
                if isinstance(value, str) and (key == "path" or key.endswith(("_file", "_root"))):
                    yield f"data.{split}[{i}].{key}", value


def missing_data(config: dict) -> list[str]:
    return [f"{key}: no such file or folder '{path}'" for key, path in _dataset_paths(config.get("data") or {})
            if not Path(path).exists()]


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def missing_weights(model_cfg: dict) -> list[str]:
    """Component ``pretrained`` ids that can be neither read locally nor downloaded."""
    if model_cfg.get("init_from"):
        return []
    out = []
    for name, node in model_cfg.items():
        ref = node.get("pretrained") if isinstance(node, dict) else None
        if not isinstance(ref, str) or Path(ref).exists() or not _hub_offline():
            continue
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(ref, "config.json"), str):
            out.append(f"model.{name}.pretrained: '{ref}' is not a local folder and not in the Hugging Face cache "
                       f"(HF_HUB_OFFLINE=1)")
    return out


# model: node key → registry kind of the component it names
MODEL_COMPONENT_KINDS = {"vision_encoder": "vision_encoder", "feature_refiner": "feature_refiner",
                         "region_extractor": "region_extractor", "projector": "projector",
                         "region_projector": "projector", "llm": "llm", "head": "head"}


def check_component_names(config: dict) -> None:
    """Every ``type:`` of the model's components, the datasets and their prompts names a registered component
    (a typo is reported before any file is checked or any weight is loaded)."""
    from regionvlm.registry import DATASETS, PROMPTS, registry_for

    model = config.get("model") or {}
    for key, kind in MODEL_COMPONENT_KINDS.items():
        node = model.get(key)
        if isinstance(node, dict) and "type" in node:
            registry_for(kind).get(node["type"], key_path=f"model.{key}.type")
    for split in ("train", "val"):
        for i, node in enumerate((config.get("data") or {}).get(split) or []):
            if isinstance(node, dict) and "type" in node:
                DATASETS.get(node["type"], key_path=f"data.{split}[{i}].type")
                prompt = node.get("prompt")
                if isinstance(prompt, dict) and "type" in prompt:
                    PROMPTS.get(prompt["type"], key_path=f"data.{split}[{i}].prompt.type")


def check_inputs(config: dict, source: str = "") -> None:
    """Raise one `ConfigError` (prefixed with the config file ``source``) for an unknown component name, or
    listing every missing weight and data file of a training config."""
    prefix = f"{source} " if source else ""
    try:
        check_component_names(config)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}{exc}") from exc
    problems = missing_weights(config.get("model") or {}) + missing_data(config)
    if problems:
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
        raise ConfigError(f"{prefix}{problems[0]}{more}; {TINY_HINT}")
