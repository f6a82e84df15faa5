"""Checks that run before anything heavy, in this order: every registered name and every key of the config
(`check_config`: what ``regionvlm config`` runs as the user's dry run), then weights and data files
(`check_inputs`, for ``train``): a misspelt key is reported before the missing files of a full-scale recipe, and
a recipe without its weights or data stops at once with a message naming every missing file, instead of failing
after minutes of loading.

Conventions checked: dataset node keys named ``path`` or ending in ``_file`` / ``_root`` are paths; component
nodes with ``pretrained: <str>`` name a local folder or a hub id (a hub id must be in the local cache when the
hub is offline, ``HF_HUB_OFFLINE=1``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from regionvlm.contracts import MODEL_COMPONENTS, MODEL_KEYS, RUNTIME_KEYS
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
        if not isinstance(ref, str) or Path(ref).exists():
            continue
        if ref.startswith(("/", ".", "~")) or ref.count("/") > 1:  # a path, not an `owner/name` hub id
            out.append(f"model.{name}.pretrained: no such folder '{ref}'")
            continue
        if not _hub_offline():
            continue
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(ref, "config.json"), str):
            out.append(f"model.{name}.pretrained: '{ref}' is not a local folder and not in the Hugging Face cache "
                       f"(HF_HUB_OFFLINE=1)")
    return out


def _check_model(model: dict) -> None:
    from regionvlm.registry import _did_you_mean, registry_for

    for key in model:
        if key not in MODEL_KEYS:
            raise ConfigError(f"model.{key}: unknown key{_did_you_mean(key, MODEL_KEYS)} "
                              f"known: {', '.join(MODEL_KEYS)}")
    for key, kind in MODEL_COMPONENTS.items():
        node = model.get(key)
        if node is not None:
            registry_for(kind).check_node(node, f"model.{key}", RUNTIME_KEYS[kind])
            _check_nested(registry_for(kind).get(node["type"]), node, f"model.{key}")
    for engine_key in ("trainable", "freeze"):
        for i, selector in enumerate(model.get(engine_key) or []):
            check_selector_name(selector, f"model.{engine_key}[{i}]")


def _check_nested(cls: type, node: dict, key_path: str) -> None:
    """A component's nested settings (``nested_settings``: key → settings class, e.g. the LLM's ``lora``)."""
    from regionvlm.registry import checked_kwargs

    for key, settings in getattr(cls, "nested_settings", {}).items():
        if isinstance(node.get(key), dict):
            checked_kwargs(settings, node[key], key_path=f"{key_path}.{key}", what=f"{settings.__name__}",
                           require=False)


def check_selector_name(selector: object, key_path: str) -> None:
    """A ``trainable``/``freeze``/``lr_multipliers`` selector whose first dotted part is a plain name must name a
    component (``projectr`` is a typo; ``llm.*lora_*`` and ``*.bias`` are judged once the model exists)."""
    from regionvlm.registry import _did_you_mean

    if not isinstance(selector, str):
        raise ConfigError(f"{key_path}: expected a component name or a glob pattern, got {selector!r}")
    head = selector.split(".")[0]
    if not any(c in head for c in "*?[") and head not in MODEL_COMPONENTS:
        raise ConfigError(f"{key_path}: '{selector}' names no component{_did_you_mean(head, MODEL_COMPONENTS)} "
                          f"components: {', '.join(MODEL_COMPONENTS)}")


def _check_data(data: dict) -> None:
    from regionvlm.data.datamodule import RegionDataModule
    from regionvlm.processor import DATA_KEYS, check_data_settings
    from regionvlm.registry import DATASETS, PROMPTS, checked_kwargs

    # the data section = the processor's keys + the loaders' keys, checked as engine.trainer.build_datamodule
    # and RegionVLMModule.processor use them
    check_data_settings(data)
    checked_kwargs(RegionDataModule, {k: v for k, v in data.items() if k not in DATA_KEYS}, key_path="data",
                   what="the data module", require=False, runtime={"processor": None})
    for split in ("train", "val"):
        for i, node in enumerate(data.get(split) or []):
            key = f"data.{split}[{i}]"
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: expected a mapping with 'type', got {node!r}")
            DATASETS.check_node({k: v for k, v in node.items() if k != "ratio"}, key)
            if node.get("prompt") is not None:  # the dataset gives its prompt runtime values: no missing-key check
                PROMPTS.check_node(node["prompt"], f"{key}.prompt", require=False)


def _check_trainer(trainer: dict) -> None:
    import lightning as L

    from regionvlm.engine.module import nonfinite_policy
    from regionvlm.engine.strategies import check_strategy
    from regionvlm.engine.trainer import OUR_TRAINER_KEYS, TRAINER_RUNTIME_KEYS
    from regionvlm.registry import checked_kwargs

    nonfinite_policy({"trainer": trainer})
    every = trainer.get("checkpoint_every_n_steps")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ConfigError(f"trainer.checkpoint_every_n_steps: expected a positive number of steps, got {every!r}")
    trainer = {k: v for k, v in trainer.items() if k not in OUR_TRAINER_KEYS}
    checked_kwargs(L.Trainer, trainer, key_path="trainer", what="Lightning Trainer", require=False,
                   runtime=dict.fromkeys(TRAINER_RUNTIME_KEYS))
    check_strategy(trainer.get("strategy"))


def _check_eval(eval_cfg: dict) -> None:
    """The ``eval:`` section as ``regionvlm eval`` reads it: its own keys (`evaluation.runner.eval_settings`) and
    each benchmark's node (its name, and its keys against the benchmark's constructor)."""
    from regionvlm.evaluation.runner import eval_settings
    from regionvlm.registry import BENCHMARKS, checked_kwargs

    checked_kwargs(eval_settings, eval_cfg, key_path="eval", what="the eval section", require=False)
    benchmarks = eval_cfg.get("benchmarks") or {}
    if not isinstance(benchmarks, dict):
        raise ConfigError(f"eval.benchmarks: expected a mapping of benchmark name → settings, got {benchmarks!r}")
    for name, node in benchmarks.items():
        key = f"eval.benchmarks.{name}"
        if node is not None and not isinstance(node, dict):
            raise ConfigError(f"{key}: expected a mapping of the benchmark's settings, got {node!r}")
        node = dict(node or {})
        own = node.pop("config", None) or str(name)
        if not own.endswith((".yaml", ".yml")):  # a path names a benchmark YAML of one's own: checked when read
            BENCHMARKS.get(own, key_path=key)  # the name is the key: no '.type' in the message
            BENCHMARKS.check_node({"type": own, **node}, key, require=False)


def missing_benchmark_files(eval_cfg: dict) -> list[str]:
    """Every annotation file or image folder a benchmark of the ``eval:`` section names (its YAML's defaults with
    the section's settings on top) that does not exist, each naming its key."""
    from regionvlm.evaluation.benchmark import benchmark_config

    problems = []
    for name, node in (eval_cfg.get("benchmarks") or {}).items():
        node = dict(node or {})
        resolved = benchmark_config(node.pop("config", None) or str(name), **node)
        files = resolved.get("annotations")
        files = [files] if isinstance(files, str) else list(files or [])
        for i, path in enumerate(files):
            if isinstance(path, str) and not Path(path).exists():
                index = f"[{i}]" if len(files) > 1 else ""
                problems.append(f"eval.benchmarks.{name}.annotations{index}: no such file '{path}'")
        images = resolved.get("images")
        if isinstance(images, str) and not Path(images).exists():
            problems.append(f"eval.benchmarks.{name}.images: no such folder '{images}'")
    return problems


def _check_optim(optim: dict) -> None:
    for selector in optim.get("lr_multipliers") or {}:
        check_selector_name(selector, f"optim.lr_multipliers.{selector}")


def check_config(config: dict, source: str = "") -> None:
    """Check every registered name (``type:``, ``eval.benchmarks``) and every key of the ``model``, ``data`` and
    ``trainer`` sections against the constructors' signatures, the way building them would, without building
    anything or looking for weights or data. Raises one `ConfigError` prefixed with the config file ``source``."""
    try:
        _check_model(config.get("model") or {})
        _check_data(config.get("data") or {})
        _check_trainer(config.get("trainer") or {})
        _check_eval(config.get("eval") or {})
        _check_optim(config.get("optim") or {})
    except ConfigError as exc:
        raise ConfigError(f"{source} {exc}" if source else str(exc)) from exc


def check_inputs(config: dict, source: str = "") -> None:
    """`check_config`, then raise one `ConfigError` (prefixed with the config file ``source``) listing every
    missing weight and data file of a training config."""
    prefix = f"{source} " if source else ""
    check_config(config, source)
    problems = missing_weights(config.get("model") or {}) + missing_data(config)
    if problems:
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
        raise ConfigError(f"{prefix}{problems[0]}{more}; {TINY_HINT}")
