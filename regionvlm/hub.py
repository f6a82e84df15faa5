"""Self-contained model folders ("exports") and self-contained training checkpoints.

An export folder holds everything needed to rebuild the model offline, and nothing else:

    config.yaml          resolved config; pretrained component nodes rewritten to their architecture config
    model.safetensors    all weights (strict load: missing or unexpected keys are an error)
    tokenizer files      as written by the tokenizer's save_pretrained (special tokens included)

It is written to a temporary folder beside the target and renamed into place, so a killed export leaves
nothing half-written.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from regionvlm.errors import ConfigError, UserError

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
ENGINE_ONLY_KEYS = ("init_from",)


def architecture_config(model_cfg: dict, model: Any) -> dict:
    """The ``model:`` node rewritten so that building it loads no external weights.

    A component may define ``architecture_node(node) -> node`` to say how; otherwise a component wrapping a
    transformers model (``.model.config``) gets ``config: <its full config dict>`` instead of ``pretrained:``.
    """
    cfg = copy.deepcopy(dict(model_cfg))
    for key in ENGINE_ONLY_KEYS:
        cfg.pop(key, None)
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


def save_export(out_dir: str | os.PathLike, model: Any, tokenizer: Any, cfg: dict,
                dtype: str | None = None, overwrite: bool = False) -> Path:
    """Write ``model`` + ``tokenizer`` + ``cfg`` (a resolved plain dict) as a self-contained folder."""
    import torch
    import yaml
    from safetensors.torch import save_model

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(f"{out_dir}: export folder exists and is not empty (pass --overwrite to replace it)")
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"--dtype: unknown dtype '{dtype}'; known: {', '.join(DTYPES)}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        cfg = copy.deepcopy(cfg)
        cfg["model"] = architecture_config(cfg["model"], model)
        cfg.setdefault("export", {})["dtype"] = dtype or "fp32"
        if dtype and dtype != "fp32":
            model = copy.deepcopy(model).to(getattr(torch, DTYPES[dtype]))
        save_model(model, str(tmp / WEIGHTS_FILE))
        tokenizer.save_pretrained(str(tmp))
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(cfg, sort_keys=False))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_export_config(export_dir: str | os.PathLike) -> dict:
    import yaml

    export_dir = Path(export_dir)
    path = export_dir / CONFIG_FILE
    if not path.is_file() or not (export_dir / WEIGHTS_FILE).is_file():
        raise UserError(f"{export_dir}: not a regionvlm export (needs {CONFIG_FILE} and {WEIGHTS_FILE}); "
                        f"make one with 'regionvlm export RUN_DIR --out DIR'")
    return yaml.safe_load(path.read_text())


def load_export(export_dir: str | os.PathLike, map_location: str = "cpu") -> tuple[Any, Any, dict]:
    """Rebuild ``(model, tokenizer, cfg)`` from an export folder alone, loading weights strictly."""
    from safetensors.torch import load_model
    from transformers import AutoTokenizer

    from regionvlm.model import build_model

    export_dir = Path(export_dir)
    cfg = read_export_config(export_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(export_dir))
    model = build_model(cfg["model"], tokenizer)
    missing, unexpected = load_model(model, str(export_dir / WEIGHTS_FILE), strict=False, device=map_location)
    if missing or unexpected:
        raise UserError(f"{export_dir / WEIGHTS_FILE}: weights do not match the config "
                        f"(missing: {sorted(missing)[:5]}, unexpected: {sorted(unexpected)[:5]})")
    model.eval()
    return model, tokenizer, cfg


def build_model_and_tokenizer(model_cfg: dict) -> tuple[Any, Any, dict]:
    """``(model, tokenizer, model_cfg)`` from the ``model:`` node. With ``init_from: EXPORT_DIR`` architecture and
    weights come from that export (each component's ``type`` in the config must match it) and the returned
    config is the export's architecture plus this stage's engine keys (``trainable`` ...)."""
    from regionvlm.model import ENGINE_KEYS, build_model
    from regionvlm.plugins.llms import build_tokenizer

    init_from = model_cfg.get("init_from")
    if not init_from:
        tokenizer = build_tokenizer(model_cfg["llm"])
        return build_model(model_cfg, tokenizer), tokenizer, model_cfg
    if not Path(init_from).is_dir():
        raise ConfigError(f"model.init_from: no export folder at '{init_from}' (train the previous stage first)")
    model, tokenizer, export_cfg = load_export(init_from)
    model.train()  # exports load in eval mode; Lightning keeps the modes it finds
    for name, node in model_cfg.items():
        theirs = export_cfg["model"].get(name)
        if isinstance(node, dict) and isinstance(theirs, dict) and node.get("type") != theirs.get("type"):
            raise ConfigError(f"model.{name}.type: '{node.get('type')}' differs from the init_from export's "
                              f"'{theirs.get('type')}' ({init_from})")
    return model, tokenizer, {**export_cfg["model"], **{k: model_cfg[k] for k in ENGINE_KEYS if k in model_cfg}}
