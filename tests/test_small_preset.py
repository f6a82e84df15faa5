"""The small preset's path, with a tiny random stand-in for SmolLM2: a transformers folder with its own tokenizer
and ChatML chat template, loaded through `model.llm.pretrained` as the converted folder is; the data mixture
(grouped classification, one-sentence region captions, image captions), packing, training and the scope
benchmark, end to end through the CLI."""

import json

import pytest

from regionvlm.cli import main
from tests.conftest import TINY

CHATML = ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nYou are a "
          "helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def chat_llm(tmp_path_factory):
    """A 2-layer LLaMA with the tiny tokenizer plus ChatML's tokens and template, saved as a model folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("chat_llm")
    tok = AutoTokenizer.from_pretrained(TINY / "tokenizer")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "eos_token": "<|im_end|>"})
    tok.chat_template = CHATML
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                 tie_word_embeddings=True)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_small_preset_trains_and_is_scored_for_scope(tiny_workspace, chat_llm, capsys):
    runs = tiny_workspace / "runs"
    # the small preset's vision side starts from the tiny preset's stage 2 (as `make small` trains it first)
    fast = ["trainer.max_steps=2", "trainer.limit_val_batches=0", "data.batch_size=4", "data.num_workers=0",
            "trainer.enable_progress_bar=false"]
    assert main(["train", "rgpt/tiny/stage1", *fast]) == 0
    assert main(["train", "rgpt/tiny/stage2", *fast]) == 0
    capsys.readouterr()
    over = [f"model.llm.pretrained={chat_llm}", "trainer.max_steps=3", "data.batch_size=4", "data.num_workers=0",
            "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]
    assert main(["train", "rgpt/small/train", *over]) == 0
    assert "init_components: vision_encoder, feature_refiner, region_extractor from" in capsys.readouterr().out
    export = runs / "rgpt-small" / "export"
    card = (export / "config.yaml").read_text()
    assert "chat_template" in card and "sentence_caption" in card  # trained with both task prompts
    log = (runs / "rgpt-small" / "logs" / "metrics.csv").read_text()
    assert "train/padding_waste" in log
    assert main(["eval", "rgpt/small/eval", "--model", str(export), "eval.benchmarks.scope.limit=6",
                 "eval.gallery=0", "eval.num_workers=0"]) == 0
    results = json.loads((runs / "rgpt-small-eval" / "eval" / "results.json").read_text())
    assert {"label_rate", "sentence_rate", "grounded_rate", "accuracy"} <= set(results["scope"])
