"""Export folders: a model card that rebuilds the model and its processor offline, from the folder alone.

    config.yaml            the card: ``model:`` architecture (pretrained hub ids rewritten to their config, so
                           building loads no external weights: `regionvlm.model.architecture_config`),
                           ``processor:`` (`RegionProcessor.to_card`: image size, mean/std, resize mode, chat
                           template, context length, placeholder token counts), ``prompts:`` (the task-prompt nodes
                           the model was trained with, by type), ``generation:`` (decoding defaults), ``export:``
    model.safetensors      all weights (strict load: missing or unexpected keys are an error)
    tokenizer files        as written by the tokenizer's save_pretrained (special tokens included)
    llm/                   the LLM alone as a plain transformers folder (`regionvlm.llm_folder`), which
                           ``vllm serve`` loads as it is: what ``--engine vllm`` runs (not read to load the model)
    training_config.yaml   the resolved training config, for provenance only: loading never reads it

Like a transformers folder with its processor config (or timm's pretrained config), everything that turns an
image, regions and a question into model inputs is in the card, so `regionvlm.RegionChat`, ``predict`` and
``eval`` behave as training did without the training config or its data folder. The folder is written to a
temporary folder beside the target and renamed into place: a killed export leaves nothing half-written.

Also here: `load_weights`, the one strict weight loader (an export's safetensors file, a checkpoint's state
dict, an ``init_from`` stage's export).
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from regionvlm.errors import UserError

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
TRAINING_CONFIG_FILE = "training_config.yaml"
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
CARD_SECTIONS = ("model", "processor", "prompts", "generation", "imports", "export")
#: key the engine adds to an in-memory training config (never a config file's): the task prompts as the datasets
#: built them (`RegionDataModule.trained_prompts`: ``vocabulary: categories`` written out as the names)
TRAINED_PROMPTS = "trained_prompts"
LEGACY_SECTIONS = ("text",)  # cards written before the processor was one object: read, never written


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


def model_card(config: dict, model: Any, tokenizer: Any) -> dict:
    """The export's ``config.yaml`` for a resolved training config (a plain dict) and its built model. The task
    prompts are the datasets' as built (`TRAINED_PROMPTS`, which training records), else the config's nodes."""
    from regionvlm.model import architecture_config
    from regionvlm.processor import RegionProcessor

    data = config.get("data") or {}
    prompts: dict[str, dict] = dict(config.get(TRAINED_PROMPTS) or {})
    if not prompts:
        for node in _prompt_nodes(data):
            prompts.setdefault(node["type"], node)  # several datasets may share a prompt type: the first one wins
    return {
        "model": architecture_config(config["model"], model),
        "processor": RegionProcessor.from_training_config(data, model, tokenizer).to_card(),
        "prompts": prompts,
        "generation": dict(config.get("generation") or {}),
        # modules that registered components of this model (a config's `imports:`): loading needs them, and
        # importing runs their code, so loading imports them only when asked (`load_export(imports=True)`)
        "imports": list(config.get("imports") or []),
    }


def is_model_card(config: Any) -> bool:
    """A card (an export's ``config.yaml``, this layout or the earlier one with a ``text:`` section), not a
    training config (whose processor settings sit under ``data:``)."""
    return isinstance(config, Mapping) and "model" in config and isinstance(config.get("processor"), Mapping) \
        and ("template" in config["processor"] or "text" in config)


def as_model_card(config: dict, model: Any, tokenizer: Any) -> dict:
    """``config`` if it is a card (an export's), else the card of a training config (a checkpoint's)."""
    return config if is_model_card(config) else model_card(config, model, tokenizer)


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
                dtype: str | None = None, overwrite: bool = False, llm_folder: bool = True) -> Path:
    """Write ``model`` + ``tokenizer`` + the card of ``cfg`` (a resolved training config, or a card read from
    another export) as a self-contained folder; ``llm_folder``: also the LLM alone as ``llm/`` (for vLLM; an
    LLM component that is not a transformers model has none)."""
    import torch
    import yaml
    from safetensors.torch import save_model

    from regionvlm.io import make_temp_dir, publish_dir, refuse_filled_dir
    from regionvlm.processor import RegionProcessor

    out_dir = Path(out_dir)
    refuse_filled_dir(out_dir, overwrite, "export folder")
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"--dtype: unknown dtype '{dtype}'; known: {', '.join(DTYPES)}")
    model = export_view(model)
    if is_model_card(cfg):  # re-exporting a card: the processor in today's layout, the rest as it is
        card = {k: copy.deepcopy(cfg[k]) for k in CARD_SECTIONS if k in cfg}
        card["processor"] = RegionProcessor.from_card(cfg, tokenizer, model).to_card()
    else:
        card = model_card(cfg, model, tokenizer)
    card["export"] = {"dtype": dtype or "fp32"}
    tmp = make_temp_dir(out_dir)
    try:
        if dtype and dtype != "fp32":
            model = copy.deepcopy(model).to(getattr(torch, DTYPES[dtype]))
        save_model(model, str(tmp / WEIGHTS_FILE))
        tokenizer.save_pretrained(str(tmp))
        if llm_folder:
            _write_llm_folder(model.llm, tokenizer, tmp, card["processor"])
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(card, sort_keys=False))
        if not is_model_card(cfg):
            provenance = {k: v for k, v in cfg.items() if k != TRAINED_PROMPTS}  # a config file, as it was run
            (tmp / TRAINING_CONFIG_FILE).write_text(yaml.safe_dump(provenance, sort_keys=False))
        publish_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_llm_folder(llm: Any, tokenizer: Any, export_dir: Path, processor: dict) -> None:
    """``EXPORT/llm``: the export's LLM (adapters merged as in the export, or kept as ``lora/`` when the export
    keeps them) with its chat template and context length, in the weights' dtype."""
    from regionvlm.llm_folder import LLM_FOLDER, write_llm_folder

    if not (hasattr(llm, "base_model") and hasattr(llm, "lora")):  # a third-party LLM component
        print(f"{export_dir.name}: no {LLM_FOLDER}/ folder (the LLM component is not a transformers model); "
              f"--engine vllm cannot serve this export")
        return
    write_llm_folder(llm, tokenizer, export_dir / LLM_FOLDER, template=processor["template"],
                     max_length=processor["max_length"], merge_lora=llm.lora is None)


def read_card(export_dir: str | os.PathLike) -> dict:
    """The card (``config.yaml``) of an export folder, checked for the sections loading needs."""
    from regionvlm.config import load_yaml
    from regionvlm.guards import check_card_limits

    export_dir = Path(export_dir)
    path = export_dir / CONFIG_FILE
    if not path.is_file() or not (export_dir / WEIGHTS_FILE).is_file():
        raise UserError(f"{export_dir}: not a regionvlm export (needs {CONFIG_FILE} and {WEIGHTS_FILE}); "
                        f"make one with 'regionvlm export RUN_DIR --out DIR'")
    card = load_yaml(path.read_text(), str(path))  # strictly: a card from elsewhere may be hostile
    if not is_model_card(card):
        missing = next((k for k in ("model", "processor") if not isinstance(card, dict) or k not in card), "text")
        raise UserError(f"{path}: not a regionvlm model card (missing section '{missing}'); an export written "
                        f"by an older regionvlm: re-export it from its run with 'regionvlm export RUN_DIR --out DIR'")
    check_card_limits(card, path)  # sizes that would allocate beyond reason (image_size 40000, ...)
    card.setdefault("prompts", {})
    card.setdefault("generation", {})
    return card


def load_weights(model: Any, source: str | os.PathLike | Mapping[str, Any], where: str, device: str = "cpu") -> None:
    """Load weights strictly from a safetensors file or a state dict; a mismatch names the first missing and
    unexpected keys, a file that is not safetensors is one line (both `UserError`, naming ``where``). A tensor
    of the wrong shape raises torch's `RuntimeError` (the ``init_from`` build words it for its stage)."""
    if isinstance(source, Mapping):
        missing, unexpected = model.load_state_dict(source, strict=False)
    else:
        from safetensors import SafetensorError
        from safetensors.torch import load_model

        try:
            missing, unexpected = load_model(model, str(source), strict=False, device=device)
        except SafetensorError as exc:  # the user's file is bad (a copy cut short, another format): not our bug
            raise UserError(f"{where}: truncated or not a safetensors file ({exc})") from None
    if missing or unexpected:
        raise UserError(f"{where}: weights do not match the config "
                        f"(missing: {sorted(missing)[:5]}, unexpected: {sorted(unexpected)[:5]})")


def refuse_code(model_cfg: Mapping[str, Any], source: str) -> None:
    """A card's or checkpoint's architecture is data: one that would run code shipped with a model folder
    (``trust_remote_code``) is refused, whoever wrote it. A training config may opt in; what it saves may not."""
    for name, node in model_cfg.items():
        if isinstance(node, Mapping) and node.get("trust_remote_code"):
            raise UserError(f"{source}: model.{name}.trust_remote_code: refused: a saved model never runs code "
                            f"from elsewhere (set it in a training config of your own to opt in)")


def load_export(export_dir: str | os.PathLike, map_location: str = "cpu",
                imports: bool = False) -> tuple[Any, Any, dict]:
    """Rebuild ``(model, tokenizer, card)`` from an export folder alone, loading weights strictly.

    A model with components registered by modules of its own (the training config's ``imports:``, recorded in the
    card) needs them registered: through their package's ``regionvlm.plugins`` entry point (nothing to do), or
    ``imports=True``, which imports the card's modules (found on ``sys.path``, the working directory or the
    export folder). Importing a module runs its code: only for exports you trust. Without either, a component
    the registry does not know is one line saying so."""
    from transformers import AutoTokenizer

    from regionvlm.errors import RegistryError
    from regionvlm.model import build_model
    from regionvlm.registry import import_modules

    export_dir = Path(export_dir)
    card = read_card(export_dir)
    refuse_code(card["model"], str(export_dir / CONFIG_FILE))
    modules = [str(m) for m in card.get("imports") or []]
    if imports and modules:
        import_modules(modules, key_path=f"{export_dir / CONFIG_FILE} imports", search_dirs=[os.getcwd(), export_dir])
    tokenizer = AutoTokenizer.from_pretrained(str(export_dir))
    try:
        model = build_model(card["model"], tokenizer)
    except RegistryError as exc:
        if not modules or imports:
            raise
        raise UserError(f"{export_dir}: {exc}; this model's components are registered by {', '.join(modules)} "
                        f"(the card's imports:): install them as a package with a regionvlm.plugins entry point, "
                        f"or pass --imports (RegionChat.from_pretrained(..., imports=True)) to import them — "
                        f"importing runs their code, so only for exports you trust") from None
    load_weights(model, export_dir / WEIGHTS_FILE, str(export_dir / WEIGHTS_FILE), map_location)
    model.eval()
    return model, tokenizer, card
