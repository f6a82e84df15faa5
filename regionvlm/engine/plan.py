"""``regionvlm plan``: what a training config costs before it runs — parameters, memory per GPU, tokens, FLOPs.

The model is built on PyTorch's meta device: every module and parameter shape exists, nothing is allocated and
no weight is read. A component that names ``pretrained: <hub id or folder>`` is built from that checkpoint's
architecture alone: its ``config.json`` from a local folder or the Hugging Face cache, else the architecture of
the few public checkpoints the recipes name (`KNOWN_ARCHITECTURES`, the values of their ``config.json``).

The memory figure is an estimate per GPU with these parts (bytes):
- weights: every parameter at its built dtype (``bf16-true``/``16-true`` cast everything to 2 bytes);
- gradients: trainable parameters at their dtype;
- optimizer: AdamW's two fp32 moments per trainable parameter, plus an fp32 master copy of trainable 16-bit
  weights under DeepSpeed (which keeps one);
- sharding: FSDP / DeepSpeed ZeRO-3 divide weights, gradients and optimizer by the number of GPUs; ZeRO-2
  divides gradients and optimizer; DDP divides nothing;
- activations of the LLM for one micro-batch at the context length: ~34·L·h bytes per layer for 16-bit
  activations (Korthikanti et al. 2022, with memory-efficient attention: no L² term), one layer's worth plus a
  checkpoint of L·h per layer with gradient checkpointing; the vision encoder's when it trains; and the logits
  at the scored positions.
It leaves out allocator fragmentation, communication buffers and the CUDA context (~1–3 GiB): compare it with a
measured peak before trusting the last 10 %.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from functools import partial
from typing import Any

from regionvlm.errors import ConfigError

GIB = 1024 ** 3

#: Public checkpoints' architectures (their config.json values), for planning without a download.
KNOWN_ARCHITECTURES: dict[str, dict] = {
    "openai/clip-vit-large-patch14-336": {
        "model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
        "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "projection_dim": 768},
    "openai/clip-vit-large-patch14": {
        "model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
        "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "projection_dim": 768},
    "lmsys/vicuna-7b-v1.5": {
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False},
    "lmsys/vicuna-13b-v1.5": {
        "model_type": "llama", "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
        "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": 32000, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False},
}
SHARD_ALL = ("fsdp", "deepspeed_stage_3", "deepspeed_stage_3_offload")
SHARD_GRADS_AND_OPTIMIZER = ("deepspeed_stage_2", "deepspeed_stage_2_offload")


def pretrained_architecture(ref: str, key_path: str, config_class: str | None = None) -> dict:
    """The config dict of checkpoint ``ref`` without its weights: local folder or HF cache, else the table."""
    import transformers

    loader = getattr(transformers, config_class) if config_class else transformers.AutoConfig
    try:
        return loader.from_pretrained(ref).to_dict()
    except (OSError, ValueError):
        pass
    if ref in KNOWN_ARCHITECTURES:
        return dict(KNOWN_ARCHITECTURES[ref])
    raise ConfigError(f"{key_path}.pretrained: '{ref}' is neither a local folder nor in the Hugging Face cache, and "
                      f"its architecture is not known offline (known: {', '.join(KNOWN_ARCHITECTURES)}); give the "
                      f"node a 'config:' instead to plan it")


def architecture_only(model_cfg: Mapping[str, Any]) -> dict:
    """The ``model:`` node with every ``pretrained`` component rewritten by its ``weightless_node`` (the rewrite an
    export's card applies: no weights read), from the checkpoint's config (`pretrained_architecture`). An LLM's
    ``tokenizer``, when the node names one, is kept: the plan sizes the vocabulary from it."""
    from regionvlm.contracts import MODEL_COMPONENTS
    from regionvlm.registry import registry_for

    cfg = copy.deepcopy(dict(model_cfg))
    for key, kind in MODEL_COMPONENTS.items():
        node = cfg.get(key)
        if not isinstance(node, dict) or not node.get("pretrained") or "type" not in node:
            continue
        cls = registry_for(kind).get(node["type"], key_path=f"model.{key}.type")
        if not hasattr(cls, "weightless_node"):
            continue  # a component of its own: built as its node says
        tokenizer = node.get("tokenizer")
        read_config = partial(pretrained_architecture, node["pretrained"], f"model.{key}",
                              getattr(cls, "config_class", None) or None)
        cfg[key] = cls.weightless_node(node, read_config)
        if tokenizer:
            cfg[key]["tokenizer"] = tokenizer
    return cfg


class ShapeTokenizer:
    """What building a model needs of a tokenizer when none can be read: its length and special-token ids."""

    def __init__(self, base_vocab_size: int):
        from regionvlm.tokens import SPECIAL_TOKENS

        self._vocab = {tok: base_vocab_size + i for i, tok in enumerate(SPECIAL_TOKENS)}
        self._len = base_vocab_size + len(SPECIAL_TOKENS)
        self.unk_token_id, self.pad_token_id, self.eos_token_id = 0, 0, 2

    def __len__(self) -> int:
        return self._len

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self._vocab.get(token)


def build_meta_model(model_cfg: Mapping[str, Any]) -> tuple[Any, dict]:
    """``(model on the meta device, architecture-only model node)``."""
    import torch

    from regionvlm.model import build_model
    from regionvlm.plugins.llms import build_tokenizer

    arch = architecture_only(model_cfg)
    llm = arch["llm"]
    if llm.get("tokenizer") or llm.get("pretrained"):
        tokenizer = build_tokenizer(llm)
    else:
        tokenizer = ShapeTokenizer(int((llm.get("config") or {}).get("vocab_size", 32000)))
    with torch.device("meta"):
        model = build_model(arch, tokenizer)
    return model, arch


def _numel(module: Any, trainable: bool | None = None) -> int:
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


def _bytes(module: Any, trainable: bool | None = None, force: int | None = None) -> int:
    return sum(p.numel() * (force or p.element_size()) for p in module.parameters()
               if trainable is None or p.requires_grad == trainable)


def world_size(trainer_cfg: Mapping[str, Any], gpus: int | None) -> int:
    if gpus is not None:
        return gpus
    devices, nodes = trainer_cfg.get("devices", 1), int(trainer_cfg.get("num_nodes", 1) or 1)
    if isinstance(devices, int) and devices > 0:
        return devices * nodes
    if isinstance(devices, (list, tuple)):
        return len(devices) * nodes
    return nodes  # "auto": unknown before the job; --gpus says how many


def plan(config: Mapping[str, Any], gpus: int | None = None, micro_batch: int | None = None) -> dict:
    """The plan of a resolved config (a plain dict): see the module docstring for what each figure counts."""
    from regionvlm.engine.optim import apply_trainable
    from regionvlm.engine.strategies import strategy_name

    model_cfg = dict(config["model"])
    model, arch = build_meta_model(model_cfg)
    apply_trainable(model, model_cfg.get("trainable"), model_cfg.get("freeze"))
    trainer_cfg = dict(config.get("trainer") or {})
    data_cfg = dict(config.get("data") or {})
    precision = str(trainer_cfg.get("precision", "32"))
    strategy = strategy_name(trainer_cfg.get("strategy"))
    n_gpus = world_size(trainer_cfg, gpus)
    batch = int(micro_batch or data_cfg.get("batch_size", 1))
    seq = int(data_cfg.get("max_length", 2048))

    components = {}
    for name, child in model.named_children():
        if child is not None:
            components[name] = {"trainable": _numel(child, True), "frozen": _numel(child, False)}
    trainable_n = _numel(model, True)
    sixteen_bit = precision.startswith(("bf16", "16"))
    weight_size = 2 if precision in ("bf16-true", "16-true") else None
    weights = _bytes(model, force=weight_size)
    grads = _bytes(model, True, force=weight_size)  # gradients take their parameter's dtype
    optimizer = 8 * trainable_n
    if strategy.startswith("deepspeed") and (weight_size == 2 or any(
            p.element_size() == 2 for p in model.parameters() if p.requires_grad)):
        optimizer += 4 * trainable_n  # DeepSpeed keeps fp32 master weights of 16-bit parameters
    if strategy in SHARD_ALL or strategy.startswith("fsdp"):
        weights, grads, optimizer = weights / n_gpus, grads / n_gpus, optimizer / n_gpus
    elif strategy in SHARD_GRADS_AND_OPTIMIZER:
        grads, optimizer = grads / n_gpus, optimizer / n_gpus

    llm_cfg = model.llm.base_model.config if hasattr(model.llm, "base_model") else model.llm.model.config
    text_cfg = llm_cfg.get_text_config()
    hidden, layers = int(text_cfg.hidden_size), int(text_cfg.num_hidden_layers)
    act_bytes = 2 if sixteen_bit else 4
    checkpointing = bool((arch["llm"] or {}).get("gradient_checkpointing"))
    per_layer = 34 * seq * hidden * batch * act_bytes / 2  # the 34 s·b·h figure counts 2-byte activations
    llm_acts = (per_layer + layers * seq * hidden * batch * act_bytes) if checkpointing else layers * per_layer
    needs_backward_through_llm = trainable_n > 0  # everything that trains sits before the loss, behind the LLM
    if not needs_backward_through_llm:
        llm_acts = 0.0
    vision_acts = 0.0
    if _numel(model.vision_encoder, True):
        vcfg = getattr(getattr(model.vision_encoder, "model", None), "config", None)
        if vcfg is not None:
            tokens = (int(vcfg.image_size) // int(vcfg.patch_size)) ** 2 + 1
            vision_acts = int(vcfg.num_hidden_layers) * 34 * tokens * int(vcfg.hidden_size) * batch * act_bytes / 2
    answer_tokens = min(seq, 256)  # logits are computed only where a token is scored (answers)
    logits = batch * answer_tokens * int(model.llm.vocab_size) * 4
    activations = llm_acts + vision_acts + logits

    image_tokens = model.num_image_tokens
    llm_params = _numel(model.llm)
    tokens_per_step = batch * n_gpus * seq
    llm_trains = _numel(model.llm, True) > 0
    # forward 2·P·T; backward through the LLM 2·P·T (activation gradients) + 2·P·T when its weights train
    llm_flops = (2 + (2 if needs_backward_through_llm else 0) + (2 if llm_trains else 0)) * llm_params * tokens_per_step
    patches = math.prod(model.vision_encoder.grid_size)
    vision_flops = 2 * _numel(model.vision_encoder) * patches * batch * n_gpus
    return {
        "components": components,
        "total": {"trainable": trainable_n, "frozen": _numel(model, False)},
        "setting": {"precision": precision, "strategy": strategy, "gpus": n_gpus, "micro_batch": batch,
                    "context_length": seq, "gradient_checkpointing": checkpointing,
                    "lora": bool((arch["llm"] or {}).get("lora"))},
        "memory_gib": {"weights": weights / GIB, "gradients": grads / GIB, "optimizer": optimizer / GIB,
                       "activations": activations / GIB,
                       "total": (weights + grads + optimizer + activations) / GIB},
        "tokens": {"image_tokens_per_image": image_tokens, "tokens_per_region": model.tokens_per_region,
                   "context_length": seq, "tokens_per_step": tokens_per_step},
        "flops_per_step": llm_flops + vision_flops,
    }


def format_plan(result: Mapping[str, Any], source: str) -> str:
    """The plan as a plain-text report."""
    def count(n: int) -> str:
        return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n:,}"

    s = result["setting"]
    strategy = s["strategy"]
    if strategy == "auto":  # what Lightning's "auto" picks for this many devices
        strategy = "auto (= ddp over the GPUs)" if s["gpus"] > 1 else "auto (= one device, no sharding)"
    lines = [f"plan for {source}: {s['precision']}, strategy {strategy}, {s['gpus']} GPU(s), micro-batch "
             f"{s['micro_batch']}, context {s['context_length']}, gradient checkpointing "
             f"{'on' if s['gradient_checkpointing'] else 'off'}{', LoRA' if s['lora'] else ''}", "",
             f"{'component':<18}{'trainable':>14}{'frozen':>14}"]
    for name, c in {**result["components"], "total": result["total"]}.items():
        lines.append(f"{name:<18}{count(c['trainable']):>14}{count(c['frozen']):>14}")
    m = result["memory_gib"]
    lines += ["", "memory per GPU (GiB, estimate): " + ", ".join(f"{k} {v:.2f}" for k, v in m.items()), ""]
    t = result["tokens"]
    lines.append(f"tokens: {t['image_tokens_per_image']} per image, {t['tokens_per_region']} per region, "
                 f"{t['tokens_per_step']:,} per step (all GPUs, at the context length); "
                 f"~{result['flops_per_step'] / 1e12:.1f} TFLOPs per step over all GPUs "
                 f"({result['flops_per_step'] / 1e12 / max(s['gpus'], 1):.1f} per GPU)")
    return "\n".join(lines)


#: usual GPU memory sizes (GiB) for the verdict `regionvlm plan` prints without --gpu-memory
COMMON_GPUS = {"24 GiB (RTX 4090, L4)": 24, "40 GiB (A100-40GB)": 40, "48 GiB (L40S, A6000)": 48,
               "80 GiB (A100-80GB, H100)": 80, "141 GiB (H200)": 141}


def fits_common(result: Mapping[str, Any]) -> str:
    """Which usual GPU sizes the estimate fits (within 90 % of their memory, as `fits`)."""
    total = result["memory_gib"]["total"]
    yes = [name for name, gib in COMMON_GPUS.items() if total <= gib * 0.9]
    no = [name for name, gib in COMMON_GPUS.items() if total > gib * 0.9]
    parts = ([f"fits {', '.join(yes)}"] if yes else []) + ([f"does not fit {', '.join(no)}"] if no else [])
    return f"per GPU ({total:.1f} GiB estimated): " + "; ".join(parts) + " (--gpu-memory GIB for another size)"


def fits(result: Mapping[str, Any], gpu_gib: float) -> str:
    total = result["memory_gib"]["total"]
    verdict = "fits" if total <= gpu_gib * 0.9 else "does not fit"
    return f"{verdict} a {gpu_gib:g} GiB GPU ({total:.1f} GiB estimated, {math.ceil(100 * total / gpu_gib)} %)"
