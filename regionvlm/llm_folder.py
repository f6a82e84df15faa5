"""An export's LLM as a plain transformers folder, which ``vllm serve DIR`` (and ``AutoModelForCausalLM``) load as is.

    llm/
      config.json            the transformers config (vocabulary resized to the tokenizer, our token ids)
      model.safetensors      the LLM's weights alone, LoRA adapters merged (or lora/ beside them, see below)
      generation_config.json bos/eos/pad ids only: no sampling defaults for vLLM to pick up (it applies a folder's
                             temperature / top_p / repetition_penalty to every request that does not set them)
      tokenizer files        the tokenizer as trained, with the image and region placeholder tokens
      chat_template.jinja    the export's chat template (vicuna_v1 / plain rendered as Jinja, or the tokenizer's)
      regionvlm_llm.json     what the front end checks before sending embeddings: hidden size, dtype, token ids
      lora/                  only with ``merge_lora=False``: the peft adapters (vLLM: --enable-lora --lora-modules)

vLLM runs only this LLM; the region front end computes each request's input embeddings (the LLM's token
embeddings with image and region features spliced in) and sends them as prompt embeddings
(`regionvlm.vllm_engine`). The chat template is there for text-only requests through vLLM's own chat API;
region requests never use it (their prompt is rendered by regionvlm's collator before embedding).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

from regionvlm.errors import UserError

#: where an export keeps its LLM folder
LLM_FOLDER = "llm"
INFO_FILE = "regionvlm_llm.json"
LORA_FOLDER = "lora"
INFO_FORMAT = 1
_DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
           "fp16": "float16", "float16": "float16"}


def chat_template_jinja(template: str, system_prompt: str | None = None) -> str | None:
    """regionvlm's named template as a Jinja chat template rendering what the collator renders for a text-only
    conversation (the BOS the collator prepends included); ``chat_template``: None (the tokenizer's own)."""
    if template == "vicuna_v1":
        if system_prompt is None:
            from regionvlm.text.templates import VICUNA_SYSTEM

            system_prompt = VICUNA_SYSTEM
        return ("{% if bos_token %}{{ bos_token }}{% endif %}"
                "{% set ns = namespace(system=" + json.dumps(system_prompt) + ") %}"
                "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system = m['content'] %}"
                "{% endif %}{% endfor %}{{ ns.system + ' ' }}"
                "{% for m in messages %}"
                "{% if m['role'] == 'user' %}{{ 'USER: ' + m['content'] + ' ' }}"
                "{% elif m['role'] == 'assistant' %}{{ 'ASSISTANT: ' + m['content'] + eos_token }}{% endif %}"
                "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
    if template == "plain":
        return ("{% if bos_token %}{{ bos_token }}{% endif %}"
                "{% for m in messages %}"
                "{% if m['role'] == 'user' %}{{ m['content'] + '\\n' }}"
                "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% endif %}"
                "{% endfor %}")
    if template == "chat_template":
        return None
    raise UserError(f"text.template: unknown template '{template}'; known: vicuna_v1, plain, chat_template")


def _transformers_model(llm: Any, merge_lora: bool) -> tuple[Any, Any]:
    """(plain transformers model to save, peft model whose adapters to save beside it or None)."""
    if not hasattr(llm, "base_model") or not hasattr(llm, "lora"):  # a transformers model given directly
        if not hasattr(llm, "save_pretrained") or not hasattr(llm, "config"):
            raise TypeError(f"write_llm_folder: expected an HFCausalLM component or a transformers model, "
                            f"got {type(llm).__name__}")
        return llm, None
    if llm.lora is None:
        return llm.base_model, None
    if merge_lora:
        return llm.merged().base_model, None
    # the base without the adapters' layers injected (get_base_model() still holds them): unload a copy
    return copy.deepcopy(llm.model).unload(), llm.model


def write_llm_folder(llm: Any, tokenizer: Any, out_dir: str | os.PathLike, *, template: str = "chat_template",
                     system_prompt: str | None = None, max_length: int | None = None, dtype: str | None = None,
                     merge_lora: bool = True) -> Path:
    """Write ``llm`` (an `HFCausalLM` component, or a transformers causal LM) and ``tokenizer`` as a plain
    transformers folder at ``out_dir`` (written beside it under a temporary name, then renamed: a killed write
    leaves the previous folder or none). ``template`` (the card's ``text.template``) and ``system_prompt`` give
    the chat template; ``max_length`` (the card's ``text.max_length``) is the context length the front end
    trained with, recorded for ``--max-model-len``; ``dtype`` (fp32 | bf16 | fp16 or torch names; default the
    model's own) casts the stored weights; ``merge_lora=False`` stores the base weights and the adapters in
    ``lora/`` instead of merging them. Returns ``out_dir``."""
    import torch
    from transformers import GenerationConfig

    from regionvlm.io import make_temp_dir, publish_dir
    from regionvlm.tokens import IMAGE_TOKEN, REGION_TOKEN

    out_dir = Path(out_dir)
    if dtype is not None and dtype not in _DTYPES:
        raise UserError(f"dtype: unknown dtype '{dtype}'; known: fp32, bf16, fp16")
    jinja = chat_template_jinja(template, system_prompt)
    model, adapters = _transformers_model(llm, merge_lora)
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        raise ValueError(f"write_llm_folder: the tokenizer has {len(tokenizer)} tokens but the LLM's embeddings "
                         f"only {vocab} rows (resize them to the tokenizer first)")
    if dtype is not None and getattr(torch, _DTYPES[dtype]) != model.dtype:
        model = copy.deepcopy(model).to(getattr(torch, _DTYPES[dtype]))
    tmp = make_temp_dir(out_dir)
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if jinja is not None:  # replaces whatever template the tokenizer carried
            for name in ("chat_template.jinja", "chat_template.json"):
                (tmp / name).unlink(missing_ok=True)
            (tmp / "chat_template.jinja").write_text(jinja)
            _drop_inline_chat_template(tmp / "tokenizer_config.json")
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
        (tmp / "generation_config.json").unlink(missing_ok=True)
        GenerationConfig(**{k: v for k, v in ids.items() if v is not None}).save_pretrained(str(tmp))
        config_path = tmp / "config.json"
        config = json.loads(config_path.read_text())
        config.update(ids)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if adapters is not None:
            adapters.save_pretrained(str(tmp / LORA_FOLDER))
        text_config = model.config.get_text_config()
        info = {"format": INFO_FORMAT, "architectures": list(config.get("architectures") or []),
                "hidden_size": int(text_config.hidden_size), "vocab_size": int(vocab),
                "dtype": str(model.dtype).removeprefix("torch."),
                "max_position_embeddings": getattr(text_config, "max_position_embeddings", None),
                "max_length": None if max_length is None else int(max_length),
                "template": template, **ids,
                "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                "region_token_id": tokenizer.convert_tokens_to_ids(REGION_TOKEN),
                "lora": None if adapters is None else {"folder": LORA_FOLDER, "rank": int(llm.lora["r"])}}
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        publish_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _drop_inline_chat_template(path: Path) -> None:
    if path.is_file():
        cfg = json.loads(path.read_text())
        if cfg.pop("chat_template", None) is not None:
            path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def read_llm_folder(folder: str | os.PathLike) -> dict:
    """The ``regionvlm_llm.json`` of an LLM folder, after checking the folder has what ``vllm serve`` loads;
    a missing or partial folder is a one-line `UserError` naming it."""
    folder = Path(folder)
    if not (folder / INFO_FILE).is_file():
        raise UserError(f"{folder}: not an LLM folder written by regionvlm (no {INFO_FILE}); re-export the model "
                        f"('regionvlm export RUN_DIR --out DIR') to get its {LLM_FOLDER}/ folder for vLLM")
    try:
        info = json.loads((folder / INFO_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder / INFO_FILE}: unreadable ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != INFO_FORMAT:
        raise UserError(f"{folder / INFO_FILE}: format {info.get('format') if isinstance(info, dict) else '?'} "
                        f"is not {INFO_FORMAT}; re-export the model with this regionvlm")
    missing = [name for name in ("config.json", "generation_config.json") if not (folder / name).is_file()]
    if not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        missing.append("tokenizer files")
    if info.get("lora") and not (folder / info["lora"]["folder"] / "adapter_config.json").is_file():
        missing.append(f"{info['lora']['folder']}/adapter_config.json")
    if missing:
        raise UserError(f"{folder}: incomplete LLM folder (missing {', '.join(missing)}); re-export the model")
    return info


def find_llm_folder(export_dir: str | os.PathLike) -> Path:
    """``EXPORT/llm``, checked (`read_llm_folder`); an export without one is a one-line `UserError`."""
    export_dir = Path(export_dir)
    folder = export_dir / LLM_FOLDER
    if not folder.is_dir():
        raise UserError(f"{export_dir}: the export has no {LLM_FOLDER}/ folder, which --engine vllm serves; "
                        f"re-export the model with this regionvlm ('regionvlm export RUN_DIR --out DIR')")
    read_llm_folder(folder)
    return folder
