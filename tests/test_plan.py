"""`regionvlm plan`: counts from a meta-device build match independent builds; memory parts follow the strategy."""

import json
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from regionvlm.cli import main
from regionvlm.config import load_config
from regionvlm.engine.plan import KNOWN_ARCHITECTURES, plan

RGPT = Path(__file__).resolve().parents[1] / "projects" / "rgpt"


def resolved(path, *overrides):
    return OmegaConf.to_container(load_config(path, list(overrides)), resolve=True)


def test_rgpt_stage2_counts_clip_l336_and_a_7b_llama_without_any_weights(capsys):
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    assert main(["plan", str(RGPT / "stage2.yaml"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    with torch.device("meta"):
        clip = CLIPVisionModel(CLIPVisionConfig(**KNOWN_ARCHITECTURES["openai/clip-vit-large-patch14-336"]))
        llama = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in KNOWN_ARCHITECTURES["lmsys/vicuna-7b-v1.5"].items()
                                                if k != "model_type"}))
    clip_n = sum(p.numel() for p in clip.parameters())
    last_layer = sum(p.numel() for p in clip.encoder.layers[-1].parameters())
    post_layernorm = sum(p.numel() for p in clip.post_layernorm.parameters())
    llama_n = sum(p.numel() for p in llama.parameters())
    assert clip_n == 303_507_456 and llama_n == 6_738_415_616   # the published sizes of CLIP-L/336 and LLaMA-7B
    vision = result["components"]["vision_encoder"]
    # select_layer -2: the last layer is dropped, and the pooled output's layernorm, which patch features never reach
    assert vision == {"trainable": 0, "frozen": clip_n - last_layer - post_layernorm}
    # the LLM gains two special tokens (<image_patch>, <region_feat>) in its untied input and output embeddings
    assert result["components"]["llm"] == {"trainable": llama_n + 2 * 2 * 4096, "frozen": 0}
    assert result["setting"]["precision"] == "bf16-mixed" and result["tokens"]["image_tokens_per_image"] == 576


def test_the_tiny_preset_counts_equal_a_real_build():
    from regionvlm.engine.build import build_model_and_tokenizer

    config = resolved(RGPT / "tiny" / "stage1.yaml")
    result = plan(config)
    model, _, _ = build_model_and_tokenizer(config["model"])
    for name, child in model.named_children():
        if child is not None:
            n = sum(p.numel() for p in child.parameters())
            c = result["components"][name]
            assert c["trainable"] + c["frozen"] == n, name
    assert result["components"]["llm"]["trainable"] == 0 and result["components"]["projector"]["frozen"] == 0


def test_sharding_divides_what_each_strategy_shards():
    base = resolved(RGPT / "stage2.yaml")
    ddp = plan({**base, "trainer": {**base["trainer"], "strategy": "ddp"}}, gpus=8)["memory_gib"]
    fsdp = plan({**base, "trainer": {**base["trainer"], "strategy": "fsdp"}}, gpus=8)["memory_gib"]
    zero2 = plan({**base, "trainer": {**base["trainer"], "strategy": "deepspeed_stage_2"}}, gpus=8)["memory_gib"]
    assert fsdp["weights"] == pytest.approx(ddp["weights"] / 8)
    assert fsdp["optimizer"] == pytest.approx(ddp["optimizer"] / 8) and fsdp["gradients"] == pytest.approx(ddp["gradients"] / 8)
    assert zero2["weights"] == pytest.approx(ddp["weights"])
    # DeepSpeed keeps an fp32 master copy of the bf16 LLM: 12 instead of 8 bytes per trainable parameter, sharded
    assert zero2["optimizer"] == pytest.approx(ddp["optimizer"] * 12 / 8 / 8)
    assert ddp["activations"] == fsdp["activations"] > 0


def test_an_unknown_hub_id_is_a_clear_error(capsys):
    assert main(["plan", str(RGPT / "stage2.yaml"), "model.llm.pretrained=someone/unknown-7b"]) == 2
    assert "model.llm.pretrained: 'someone/unknown-7b' is neither a local folder nor in the Hugging Face cache" in \
        capsys.readouterr().err


def test_the_report_says_what_auto_is_how_flops_split_and_which_gpus_fit(capsys):
    """#24 item 8: 'auto' resolved, FLOPs per step over all GPUs and per GPU, and a verdict for usual GPU sizes
    without --gpu-memory."""
    assert main(["plan", str(RGPT / "stage2.yaml"), "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "strategy auto (= ddp over the GPUs)" in out
    total = float(re.search(r"~([\d.]+) TFLOPs per step over all GPUs \(([\d.]+) per GPU\)", out).group(1))
    per_gpu = float(re.search(r"\(([\d.]+) per GPU\)", out).group(1))
    assert per_gpu == pytest.approx(total / 8, abs=0.1)
    verdict = out.strip().splitlines()[-1]
    assert verdict.startswith("per GPU (") and "80 GiB (A100-80GB, H100)" in verdict
