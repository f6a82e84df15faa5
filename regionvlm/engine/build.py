"""Building the model of a training stage from its ``model:`` node: from scratch (components built from their
nodes, pretrained weights where they name them) or, with ``init_from: EXPORT_DIR``, staged from an earlier
stage's export (its architecture with this stage's keys on top, its weights loaded strictly). Either way
``init_components: {from: EXPORT_DIR, components: [...]}`` then loads only the named components' weights from
another export (a vision side trained elsewhere, as RGPT starts from a pretrained CLIP). What
`RegionVLMModule.configure_model` runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from regionvlm.card import WEIGHTS_FILE, load_weights, read_card
from regionvlm.contracts import ENGINE_KEYS
from regionvlm.errors import ConfigError, UserError

#: keys an ``init_from`` stage cannot apply to a component: the export's weights and tokenizer replace them
SUPERSEDED_BY_EXPORT = ("pretrained", "tokenizer")


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
    stage's engine keys (``trainable`` ...). ``init_components`` (`load_components`) applies after either."""
    model, tokenizer, cfg = _build(model_cfg)
    if model_cfg.get("init_components"):
        load_components(model, model_cfg["init_components"])
    return model, tokenizer, cfg


def load_components(model: Any, node: dict) -> None:
    """Load the weights of ``node['components']`` (top-level component names) from the export ``node['from']``,
    strictly per component (`load_weights`): each must find every one of its tensors there, at its shape, and no
    other under its name; the rest of the model keeps its own initialisation."""
    from safetensors import safe_open

    where = "model.init_components"
    if not isinstance(node, dict) or set(node) != {"from", "components"} or not node["components"]:
        raise ConfigError(f"{where}: give {{from: EXPORT_DIR, components: [vision_encoder, ...]}}")
    path = Path(node["from"]) / WEIGHTS_FILE
    if not path.is_file():
        raise ConfigError(f"{where}.from: no export weights at '{path}' (train that model first)")
    names = list(node["components"])
    for name in names:
        if not hasattr(getattr(model, name, None), "state_dict"):
            raise ConfigError(f"{where}.components: '{name}' is not a component of this model")
    loaded = 0
    with safe_open(str(path), framework="pt") as f:
        for name in names:
            component, prefix = getattr(model, name), f"{name}."
            state = {key[len(prefix):]: f.get_tensor(key) for key in f.keys() if key.startswith(prefix)}
            own = component.state_dict()
            for key, tensor in state.items():
                if key in own and tensor.shape != own[key].shape:
                    raise ConfigError(f"{where}: '{prefix}{key}' is {tuple(tensor.shape)} in {path}, "
                                      f"{tuple(own[key].shape)} here")
            load_weights(component, state, f"{where}: {path}, {name}")  # strict: no key missing or unexpected
            loaded += len(state)
    print(f"init_components: {', '.join(names)} from {node['from']} ({loaded} tensors)")


def _build(model_cfg: dict) -> tuple[Any, Any, dict]:
    from transformers import AutoTokenizer

    from regionvlm.model import build_model
    from regionvlm.plugins.llms import build_tokenizer

    init_from = model_cfg.get("init_from")
    if not init_from:
        tokenizer = build_tokenizer(model_cfg["llm"])
        return build_model(model_cfg, tokenizer), tokenizer, model_cfg
    if not Path(init_from).is_dir():
        raise ConfigError(f"model.init_from: no export folder at '{init_from}' (train the previous stage first)")
    export_model_cfg = read_card(init_from)["model"]
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
        load_weights(model, Path(init_from) / WEIGHTS_FILE, f"{init_from}/{WEIGHTS_FILE}")
    except (UserError, RuntimeError) as exc:  # RuntimeError: a shape mismatch
        detail = str(exc).strip().splitlines()[0]
        raise ConfigError(f"model.init_from: the export's weights do not fit this stage's architecture "
                          f"(it changes {', '.join(changed) or 'nothing'}): {detail}") from None
    for name, lora in adapters.items():
        getattr(model, name).add_lora(lora)
    return model, tokenizer, {**arch, **{k: model_cfg[k] for k in ENGINE_KEYS if k in model_cfg}}
