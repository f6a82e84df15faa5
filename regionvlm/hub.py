"""Export folders: a model card that rebuilds the model and its processing offline, from the folder alone.

    config.yaml            the card: ``model:`` architecture (pretrained hub ids rewritten to their config, so
                           building loads no external weights), ``processor:`` (image size, mean/std, resize mode),
                           ``text:`` (chat template, context length), ``prompts:`` (the task-prompt nodes the
                           model was trained with, by type), ``generation:`` (decoding defaults), ``export:``
    model.safetensors      all weights (strict load: missing or unexpected keys are an error)
    tokenizer files        as written by the tokenizer's save_pretrained (special tokens included)
    training_config.yaml   the resolved training config, for provenance only: loading never reads it

Like a transformers folder with its ``processor_config.json`` (or timm's pretrained config), everything that
turns an image, regions and a question into model inputs is in the card, so `regionvlm.RegionChat`, ``predict``
and ``eval`` behave as training did without the training config or its data folder. The folder is written to a
temporary folder beside the target and renamed into place: a killed export leaves nothing half-written.

Building from a ``model:`` node (`build_model_and_tokenizer`) also lives here: with ``init_from: EXPORT_DIR``
the architecture and weights come from that export, the stage's own keys applied on top.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from regionvlm.errors import ConfigError, UserError

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
TRAINING_CONFIG_FILE = "training_config.yaml"
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
#: keys of the ``model:`` node that belong to the training engine, not to the architecture
ENGINE_KEYS = ("init_from", "trainable", "freeze")
#: keys an ``init_from`` stage cannot apply to a component: the export's weights and tokenizer replace them
SUPERSEDED_BY_EXPORT = ("pretrained", "tokenizer")
CARD_SECTIONS = ("model", "processor", "text", "prompts", "generation", "export")


def architecture_config(model_cfg: dict, model: Any) -> dict:
    """The ``model:`` node rewritten so that building it loads no external weights.

    A component may define ``architecture_node(node) -> node`` to say how; otherwise a component wrapping a
    transformers model (``.model.config``) gets ``config: <its full config dict>`` instead of ``pretrained:``.
    """
    cfg = {k: copy.deepcopy(v) for k, v in dict(model_cfg).items() if k not in ENGINE_KEYS}
    for name, child in model.named_children():
        node = cfg.get(name)
        if not isinstance(node, dict):
            continue
        if hasattr(child, "architecture_node"):
            cfg[name] = child.architecture_node(dict(node))
        elif node.get("pretrained") and hasattr(getattr(child, "model", None), "config"):
            node = dict(node)
            node.pop("pretrained")
            node["config"] = child.model.config.to_dict()
            cfg[name] = node
    if isinstance(cfg.get("llm"), dict):
        cfg["llm"].pop("tokenizer", None)  # the export's own tokenizer files are used
    return cfg


def _prompt_nodes(data_cfg: dict) -> Iterator[dict]:
    """The task-prompt node of every training/validation dataset (its default prompt when it names none)."""
    from regionvlm.registry import DATASETS

    for split in ("train", "val"):
        for node in data_cfg.get(split) or []:
            if not isinstance(node, dict) or "type" not in node:
                continue
            prompt = node.get("prompt")
            if prompt is None:
                prompt = getattr(DATASETS.get(node["type"]), "default_prompt", None)
            if isinstance(prompt, dict) and "type" in prompt:
                yield dict(prompt)


def model_card(config: dict, model: Any) -> dict:
    """The export's ``config.yaml`` for a resolved training config (a plain dict) and its built model."""
    data = config.get("data") or {}
    prompts: dict[str, dict] = {}
    for node in _prompt_nodes(data):
        prompts.setdefault(node["type"], node)  # several datasets may share a prompt type: the first one wins
    return {
        "model": architecture_config(config["model"], model),
        # the arguments training gave ImageProcessor (RegionVLMModule.processing): the encoder's size and
        # statistics plus every data.processor option, not only the ones known today
        "processor": {"image_size": int(model.image_size), "mean": [float(v) for v in model.image_mean],
                      "std": [float(v) for v in model.image_std], "resize_mode": "pad",
                      **(data.get("processor") or {})},
        "text": {"template": data.get("template", "vicuna_v1"), "max_length": int(data.get("max_length", 2048))},
        "prompts": prompts,
        "generation": dict(config.get("generation") or {}),
    }


def is_model_card(config: Any) -> bool:
    return isinstance(config, dict) and all(k in config for k in ("model", "processor", "text"))


def as_model_card(config: dict, model: Any) -> dict:
    """``config`` if it is a card (an export's), else the card of a training config (a checkpoint's)."""
    return config if is_model_card(config) else model_card(config, model)


def export_view(model: Any) -> Any:
    """The model as an export stores it: components with LoRA adapters merged into their base weights (unless
    their ``lora.merge_on_export`` is false). A shallow copy: the other components are shared, not copied."""
    merge = [name for name, child in model.named_children()
             if getattr(child, "lora", None) and child.lora.get("merge_on_export", True)]
    if not merge:
        return model
    view = copy.copy(model)
    view._modules = dict(model._modules)  # a shallow copy shares the dict of submodules: give it its own
    for name in merge:
        view._modules[name] = model._modules[name].merged()
    return view


def save_export(out_dir: str | os.PathLike, model: Any, tokenizer: Any, cfg: dict,
                dtype: str | None = None, overwrite: bool = False) -> Path:
    """Write ``model`` + ``tokenizer`` + the card of ``cfg`` (a resolved training config, or a card read from
    another export) as a self-contained folder."""
    import torch
    import yaml
    from safetensors.torch import save_model

    from regionvlm.io import make_temp_dir, publish_dir, refuse_filled_dir

    out_dir = Path(out_dir)
    refuse_filled_dir(out_dir, overwrite, "export folder")
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"--dtype: unknown dtype '{dtype}'; known: {', '.join(DTYPES)}")
    model = export_view(model)
    card = {k: copy.deepcopy(cfg[k]) for k in CARD_SECTIONS if k in cfg} if is_model_card(cfg) \
        else model_card(cfg, model)
    card["export"] = {"dtype": dtype or "fp32"}
    tmp = make_temp_dir(out_dir)
    try:
        if dtype and dtype != "fp32":
            model = copy.deepcopy(model).to(getattr(torch, DTYPES[dtype]))
        save_model(model, str(tmp / WEIGHTS_FILE))
        tokenizer.save_pretrained(str(tmp))
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(card, sort_keys=False))
        if not is_model_card(cfg):
            (tmp / TRAINING_CONFIG_FILE).write_text(yaml.safe_dump(cfg, sort_keys=False))
        publish_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_export_config(export_dir: str | os.PathLike) -> dict:
    """The card (``config.yaml``) of an export folder, checked for the sections loading needs."""
    import yaml

    export_dir = Path(export_dir)
    path = export_dir / CONFIG_FILE
    if not path.is_file() or not (export_dir / WEIGHTS_FILE).is_file():
        raise UserError(f"{export_dir}: not a regionvlm export (needs {CONFIG_FILE} and {WEIGHTS_FILE}); "
                        f"make one with 'regionvlm export RUN_DIR --out DIR'")
    try:
        card = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not is_model_card(card):
        missing = [k for k in ("model", "processor", "text") if not isinstance(card, dict) or k not in card]
        raise UserError(f"{path}: not a regionvlm model card (missing section '{missing[0]}'); an export written "
                        f"by an older regionvlm: re-export it from its run with 'regionvlm export RUN_DIR --out DIR'")
    card.setdefault("prompts", {})
    card.setdefault("generation", {})
    return card


def _load_weights(model: Any, path: Path, device: str = "cpu") -> None:
    """Load a safetensors file strictly; a mismatch names the first missing/unexpected keys."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    try:
        missing, unexpected = load_model(model, str(path), strict=False, device=device)
    except SafetensorError as exc:  # the user's file is bad (a copy cut short, another format): not our bug
        raise UserError(f"{path}: truncated or not a safetensors file ({exc})") from None
    if missing or unexpected:
        raise UserError(f"{path}: weights do not match the config "
                        f"(missing: {sorted(missing)[:5]}, unexpected: {sorted(unexpected)[:5]})")


def load_export(export_dir: str | os.PathLike, map_location: str = "cpu") -> tuple[Any, Any, dict]:
    """Rebuild ``(model, tokenizer, card)`` from an export folder alone, loading weights strictly."""
    from transformers import AutoTokenizer

    from regionvlm.model import build_model

    export_dir = Path(export_dir)
    card = read_export_config(export_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(export_dir))
    model = build_model(card["model"], tokenizer)
    _load_weights(model, export_dir / WEIGHTS_FILE, map_location)
    model.eval()
    return model, tokenizer, card


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def _differences(ours: Any, theirs: Any, path: str) -> list[str]:
    """Key paths where ``ours`` (the stage's node) sets a value that differs from ``theirs`` (the export's)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return [d for k, v in ours.items() for d in _differences(v, theirs.get(k), f"{path}.{k}")]
    return [] if ours == theirs else [f"{path}={ours!r}"]


def init_from_architecture(model_cfg: dict, export_model_cfg: dict, source: str) -> tuple[dict, list[str]]:
    """The export's architecture with this stage's ``model:`` keys applied on top, and the keys that changed.

    A component's ``type`` must match the export's; ``pretrained``/``tokenizer`` are superseded by the export's
    weights and tokenizer (left out); every other key the stage sets is applied — a setting such as
    ``gradient_checkpointing`` simply takes effect, and a change the export's weights cannot fit (a layer count,
    a hidden size) is rejected by the strict weight load that follows."""
    stage = {}
    for name, node in model_cfg.items():
        if name in ENGINE_KEYS:
            continue
        theirs = export_model_cfg.get(name)
        if isinstance(node, dict):
            if isinstance(theirs, dict) and node.get("type") != theirs.get("type"):
                raise ConfigError(f"model.{name}.type: '{node.get('type')}' differs from the init_from export's "
                                  f"'{theirs.get('type')}' ({source})")
            node = {k: v for k, v in node.items() if k not in SUPERSEDED_BY_EXPORT}
        stage[name] = node
    changed = _differences(stage, export_model_cfg, "model")
    return _merge(export_model_cfg, stage), [c.removeprefix("model.") for c in changed]


def build_model_and_tokenizer(model_cfg: dict) -> tuple[Any, Any, dict]:
    """``(model, tokenizer, model_cfg)`` from the ``model:`` node (a plain dict).

    With ``init_from: EXPORT_DIR`` the architecture, weights and tokenizer come from that export with the stage's
    own keys applied on top (`init_from_architecture`); the returned config is that architecture plus this
    stage's engine keys (``trainable`` ...)."""
    from transformers import AutoTokenizer

    from regionvlm.model import build_model
    from regionvlm.plugins.llms import build_tokenizer

    init_from = model_cfg.get("init_from")
    if not init_from:
        tokenizer = build_tokenizer(model_cfg["llm"])
        return build_model(model_cfg, tokenizer), tokenizer, model_cfg
    if not Path(init_from).is_dir():
        raise ConfigError(f"model.init_from: no export folder at '{init_from}' (train the previous stage first)")
    export_model_cfg = read_export_config(init_from)["model"]
    arch, changed = init_from_architecture(model_cfg, export_model_cfg, str(init_from))
    if changed:
        print(f"init_from {init_from}: applying this stage's {', '.join(changed)}")
    # adapters this stage adds (LoRA on an export without it) go on after the export's weights are in
    adapters = {name: node["lora"] for name, node in arch.items()
                if isinstance(node, dict) and node.get("lora") and not (export_model_cfg.get(name) or {}).get("lora")}
    base_arch = {k: ({kk: vv for kk, vv in v.items() if kk != "lora"} if k in adapters else v) for k, v in arch.items()}
    tokenizer = AutoTokenizer.from_pretrained(str(init_from))
    model = build_model(base_arch, tokenizer)
    try:
        _load_weights(model, Path(init_from) / WEIGHTS_FILE)
    except (UserError, RuntimeError) as exc:  # RuntimeError: a shape mismatch
        detail = str(exc).strip().splitlines()[0]
        raise ConfigError(f"model.init_from: the export's weights do not fit this stage's architecture "
                          f"(it changes {', '.join(changed) or 'nothing'}): {detail}") from None
    for name, lora in adapters.items():
        getattr(model, name).add_lora(lora)
    return model, tokenizer, {**arch, **{k: model_cfg[k] for k in ENGINE_KEYS if k in model_cfg}}
