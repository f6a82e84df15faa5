import os
from pathlib import Path

import pytest

TINY = Path(__file__).resolve().parents[1] / "projects" / "rgpt" / "tiny"

# The model hub is unreachable in tests and CI: fail fast instead of retrying for ~45 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # tiny tensors on a 2-core box: OpenMP threads contending with any other process make steps ~50x slower
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_workspace(tmp_path_factory):
    """A module's workspace: the synthetic set (24 train + 12 val images, written through the CLI) under
    ``data/synth`` and an empty ``runs/``, as ``REGIONVLM_DATA`` and ``REGIONVLM_OUTPUT``."""
    import torch

    from regionvlm.cli import main

    root = tmp_path_factory.mktemp("workspace")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REGIONVLM_DATA", str(root / "data"))
        mp.setenv("REGIONVLM_OUTPUT", str(root / "runs"))
        torch.manual_seed(0)
        assert main(["data", "synth", "--out", str(root / "data" / "synth"), "--n", "24", "--n-val", "12"]) == 0
        yield root


def tiny_training_config(**data_overrides) -> dict:
    """The tiny stage-1 config with a data section that sets non-default processing (the card must carry it)."""
    from omegaconf import OmegaConf

    from regionvlm.config import load_config

    cfg = OmegaConf.to_container(load_config(TINY / "stage1.yaml"), resolve=True)
    cfg["data"].update({"template": "plain", "max_length": 200, "processor": {"resize_mode": "resize"}})
    cfg["data"]["train"][0]["prompt"] = {"type": "region_classification", "vocabulary": ["red circle", "blue square"]}
    cfg["data"].update(data_overrides)
    return cfg


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """A random-init tiny model and its export, written from a training config whose data section sets a
    non-default template, context length, resize mode and prompt vocabulary."""
    import torch

    from regionvlm.card import save_export
    from regionvlm.engine.build import build_model_and_tokenizer

    torch.manual_seed(0)
    config = tiny_training_config()
    model, tokenizer, _ = build_model_and_tokenizer(config["model"])
    out = tmp_path_factory.mktemp("export") / "export"
    save_export(out, model, tokenizer, config)
    return model.eval(), tokenizer, config, out


def sentencepiece_llm_folder(out: Path, hidden: int = 32) -> Path:
    """A LLaMA folder as LLaMA-2 and Vicuna v1.5 ship theirs: config.json, weights and a sentencepiece
    ``tokenizer.model`` with no ``tokenizer.json`` (trained offline on a few sentences; random weights)."""
    import json

    import sentencepiece as spm
    from transformers import LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(["what is the red circle next to the blue square", "a small green triangle",
                                 "describe the region in one sentence", "answer the question"] * 40))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(out / "tokenizer"), vocab_size=64,
                                   model_type="bpe", bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
                                   character_coverage=1.0, minloglevel=2)
    corpus.unlink()
    (out / "tokenizer.vocab").unlink()
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    config = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(out)
    return out
