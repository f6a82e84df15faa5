"""Language models: a transformers causal LM that reads ``inputs_embeds``; plus the tokenizer builder.

Contract: built with runtime ``vocab_size`` (the tokenizer's length, special tokens included); attributes
``hidden_size``; methods ``get_input_embeddings()``, ``forward(inputs_embeds, attention_mask, ...)`` and
``generate(inputs_embeds=..., attention_mask=..., ...)`` (HF generation with the KV cache).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from regionvlm.errors import ConfigError
from regionvlm.plugins.vision import _dtype
from regionvlm.registry import LLMS, to_plain
from regionvlm.tokens import add_placeholder_tokens


@LLMS.register("hf_causal_lm")
class HFCausalLM(nn.Module):
    """Any transformers causal LM (LLaMA/Vicuna, Qwen2, …) via AutoModelForCausalLM.

    Options: ``pretrained`` (hub id or local dir) or ``config`` (a dict with ``model_type``, random init);
    ``tokenizer`` (tokenizer path when it differs from ``pretrained``; read by `build_tokenizer`); ``dtype``
    (float32 | bfloat16 | float16; default float32); ``attn_implementation`` (sdpa | eager | flash_attention_2);
    ``gradient_checkpointing`` (false); ``trust_remote_code`` (false: a checkpoint that ships its own Python code is
    refused unless the config says so); ``lora`` (a `LoraSettings` mapping: LoRA adapters through peft).
    Embeddings are resized to ``vocab_size``; new rows get the mean embedding.
    """

    nested_settings: ClassVar[dict[str, type]] = {}  # filled below: {"lora": LoraSettings} (the dry run checks it)

    def __init__(self, vocab_size: int, pretrained: str | None = None, config: dict | None = None,
                 tokenizer: str | None = None, dtype: str | None = "float32", attn_implementation: str = "sdpa",
                 gradient_checkpointing: bool = False, lora: Mapping[str, Any] | None = None,
                 trust_remote_code: bool = False):
        super().__init__()
        from transformers import AutoConfig, AutoModelForCausalLM

        if (pretrained is None) == (config is None):
            raise ConfigError("model.llm: give exactly one of 'pretrained' (hub id or local dir) or 'config'")
        torch_dtype = _dtype(dtype) or torch.float32
        if pretrained is not None:
            with remote_code_refusal(pretrained), not_an_llm(pretrained, "pretrained", "a causal LM"):
                model, info = AutoModelForCausalLM.from_pretrained(
                    pretrained, dtype=torch_dtype, attn_implementation=attn_implementation, output_loading_info=True,
                    trust_remote_code=trust_remote_code)
            missing = info.get("missing_keys") or []
            if missing:
                raise ConfigError(f"model.llm.pretrained: checkpoint '{pretrained}' lacks {len(missing)} weights "
                                  f"(e.g. {', '.join(sorted(missing)[:3])})")
        else:
            cfg = dict(config)
            cfg.setdefault("vocab_size", vocab_size)  # random init: exactly the tokenizer's vocabulary
            if "model_type" not in cfg:
                raise ConfigError("model.llm.config.model_type: required (e.g. llama, qwen2)")
            hf_cfg = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
            model = AutoModelForCausalLM.from_config(hf_cfg, dtype=torch_dtype,
                                                     attn_implementation=attn_implementation)
        self.model = model
        self.hidden_size = int(model.config.get_text_config().hidden_size)
        self._resize_embeddings(vocab_size)
        if gradient_checkpointing:
            # non-reentrant checkpointing works with inputs_embeds without forcing input grads
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        self.lora: dict | None = None
        if lora:
            self.add_lora(lora)

    # -- LoRA ------------------------------------------------------------------------------------------------------
    def add_lora(self, settings: Mapping[str, Any]) -> None:
        """Wrap the LM with peft LoRA adapters (peft freezes the base weights; the engine's ``trainable`` patterns
        decide what trains, e.g. ``llm.*lora_*``). ``init_from`` calls this after loading an export without them."""
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise ConfigError("model.llm.lora: needs the peft package (pip install 'regionvlm[lora]')") from None
        from regionvlm.registry import construct

        lora = construct(LoraSettings, settings, key_path="model.llm.lora", what="LoRA settings").as_dict()
        targets = list(lora["target_modules"])
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in self.model.named_modules()
                         if isinstance(m, nn.Linear)})
        missing = [t for t in targets if t not in linear]
        if missing:
            from regionvlm.registry import _did_you_mean

            raise ConfigError(f"model.llm.lora.target_modules: no linear layer named '{missing[0]}' in this LLM"
                              f"{_did_you_mean(missing[0], linear)} its linear layers: {', '.join(linear)}")
        self.model = get_peft_model(self.model, LoraConfig(
            r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], target_modules=targets,
            bias="none"))
        self.lora = lora

    @property
    def base_model(self) -> nn.Module:
        """The transformers model without adapters' wrapping."""
        return self.model.get_base_model() if self.lora is not None else self.model

    def merged(self) -> HFCausalLM:
        """A copy with the LoRA adapters merged into the base weights (what an export stores by default)."""
        import copy

        out = copy.deepcopy(self)
        out.model = out.model.merge_and_unload()
        out.lora = None
        return out

    @classmethod
    def weightless_node(cls, node: dict, read_config) -> dict:
        """The node without weights: the checkpoint's config (``read_config()``) instead of ``pretrained``; the
        ``tokenizer`` path goes too (an export carries its tokenizer files, a plan sizes the vocabulary from the
        config)."""
        if not node.get("pretrained"):
            return node
        node = {k: v for k, v in node.items() if k not in ("pretrained", "tokenizer")}
        node["config"] = read_config()
        return node

    def architecture_node(self, node: dict) -> dict:
        """The export's node: the full transformers config as built (embeddings resized to the tokenizer);
        ``lora`` only while unmerged."""
        node = {k: v for k, v in node.items() if k not in ("pretrained", "tokenizer", "lora", "trust_remote_code")}
        node["config"] = self.base_model.config.to_dict()
        if self.lora is not None:
            node["lora"] = dict(self.lora)
        return node

    @torch.no_grad()
    def _resize_embeddings(self, vocab_size: int) -> None:
        old = self.model.get_input_embeddings().weight.shape[0]
        if vocab_size <= old:  # checkpoints often pad their vocabulary; never shrink it
            return
        self.model.resize_token_embeddings(vocab_size, mean_resizing=False)
        inp = self.model.get_input_embeddings().weight
        inp[old:] = inp[:old].mean(0, keepdim=True)
        out = self.model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != inp.data_ptr():
            out.weight[old:] = out.weight[:old].mean(0, keepdim=True)
            if getattr(out, "bias", None) is not None:
                out.bias[old:] = out.bias[:old].mean()

    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[0]

    def get_input_embeddings(self) -> nn.Module:
        return self.base_model.get_input_embeddings()

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False, **kwargs: Any) -> Any:
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                          output_hidden_states=output_hidden_states, use_cache=False, **kwargs)

    def generate(self, **kwargs: Any) -> torch.Tensor:
        return self.model.generate(**kwargs)


class LoraSettings:
    """``model.llm.lora``: rank ``r``, scaling ``alpha``, ``dropout``, the ``target_modules`` (module-name suffixes,
    LLaMA's attention projections by default) and ``merge_on_export`` (default true: an export stores merged
    weights and loads without peft; false keeps the adapters separate)."""

    def __init__(self, r: int = 8, alpha: int = 16, dropout: float = 0.05,
                 target_modules: list[str] | tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
                 merge_on_export: bool = True):
        if int(r) < 1:
            raise ConfigError(f"model.llm.lora.r: expected a positive rank, got {r!r}")
        self.r, self.alpha, self.dropout = int(r), alpha, float(dropout)
        self.target_modules, self.merge_on_export = list(target_modules), bool(merge_on_export)

    def as_dict(self) -> dict:
        return dict(vars(self))


HFCausalLM.nested_settings = {"lora": LoraSettings}


@contextlib.contextmanager
def remote_code_refusal(path: str, what: str = "pretrained"):
    """transformers' refusal to run a checkpoint's own code (``auto_map``) as a one-line `ConfigError`."""
    try:
        yield
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise ConfigError(f"model.llm.{what}: '{path}' ships its own Python code, which is not run unless the "
                          f"config sets model.llm.trust_remote_code: true (only for code you trust)") from None


@contextlib.contextmanager
def not_an_llm(path: str, key: str, what: str):
    """transformers' refusal of a folder that holds no ``what`` (no config.json, another architecture, a tokenizer
    it cannot read) as one `ConfigError` naming ``model.llm.<key>`` and the folder."""
    try:
        yield
    except (OSError, ValueError, KeyError) as exc:
        if isinstance(exc, ValueError) and "trust_remote_code" in str(exc):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"model.llm.{key}: '{path}' does not hold {what} transformers can load: {reason}") from None


def build_tokenizer(llm_node: Mapping[str, Any] | Any):
    """The LLM's tokenizer with IMAGE_TOKEN and REGION_TOKEN added as special tokens and a pad token set.

    Reads ``tokenizer:`` from the ``model.llm`` node if given, else ``pretrained``. A pad token is the unk token
    when there is one, else a new ``<pad>``. The model's embeddings are resized to ``len(tokenizer)``.
    """
    from transformers import AutoTokenizer

    node = to_plain(llm_node) or {}
    key = "tokenizer" if node.get("tokenizer") else "pretrained"
    path = node.get(key)
    if not path:
        raise ConfigError("model.llm.tokenizer: needed when the LLM has no 'pretrained' path to read it from")
    with remote_code_refusal(path, "tokenizer"), not_an_llm(path, key, "a tokenizer"):
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=bool(node.get("trust_remote_code", False)))
    add_placeholder_tokens(tok)
    if tok.pad_token is None:
        if tok.unk_token is not None:
            tok.pad_token = tok.unk_token
        else:
            tok.add_special_tokens({"pad_token": "<pad>"})
    return tok
