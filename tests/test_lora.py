"""LoRA adapters on the LLM (peft): what trains, merged vs. separate exports, and LoRA added by an init_from stage."""

import copy

import numpy as np
import pytest
import torch

from regionvlm.card import load_export, read_card, save_export
from regionvlm.data.collate import Collator
from regionvlm.data.processing import ImageProcessor
from regionvlm.data.structures import Regions
from regionvlm.engine.build import build_model_and_tokenizer

pytest.importorskip("peft")
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def training_batch(model, tokenizer):
    collator = Collator(tokenizer, model.num_image_tokens, model.tokens_per_region, template="vicuna_v1",
                        max_length=200, processor=ImageProcessor(model.image_size, model.image_mean, model.image_std))
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    samples = [{"id": str(i), "image": image, "regions": Regions.from_boxes([[4 + i, 4, 40, 40]]),
                "conversations": [{"from": "human", "value": "<image>\nWhat is <region1>?"},
                                  {"from": "gpt", "value": ["red circle", "blue square"][i]}]} for i in range(2)]
    return collator(samples)


@pytest.fixture(scope="module")
def trained(tiny_export):
    """The tiny model with LoRA on q/v, a few optimizer steps on the adapters only."""
    _, _, config, _ = tiny_export
    torch.manual_seed(0)
    cfg = copy.deepcopy(config)
    cfg["model"]["llm"]["lora"] = dict(LORA)
    model, tokenizer, _ = build_model_and_tokenizer(cfg["model"])
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    batch = training_batch(model, tokenizer)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), tokenizer, cfg, batch, base_before, losses


def test_only_the_adapters_train(trained):
    model, _, _, _, base_before, losses = trained
    names = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert names and all(n.startswith("llm.") for n in names)
    assert losses[-1] < losses[0]
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # B starts at zero
    for name, p in model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, base_before[name]), name


@pytest.mark.parametrize("merge", [True, False])
def test_exports_give_the_unmerged_models_outputs(trained, tmp_path, merge):
    model, tokenizer, cfg, batch, _, _ = trained
    cfg = copy.deepcopy(cfg)
    model.llm.lora["merge_on_export"] = merge
    try:
        out = save_export(tmp_path / "export", model, tokenizer, cfg)
    finally:
        model.llm.lora["merge_on_export"] = True
    card = read_card(out)
    assert ("lora" in card["model"]["llm"]) is (not merge)
    loaded, _, _ = load_export(out)
    assert any("lora_" in n for n, _ in loaded.named_parameters()) is (not merge)
    assert model.llm.lora is not None  # exporting merged a copy, not the training model
    with torch.no_grad():
        expected = model(batch, all_logits=True)["logits"]
        got = loaded(batch, all_logits=True)["logits"]
    assert torch.allclose(expected, got, atol=1e-5), (expected - got).abs().max()


def test_an_init_from_stage_adds_lora_after_loading_the_exports_weights(tiny_export):
    export_model, _, config, out = tiny_export
    stage = {**config["model"], "init_from": str(out), "llm": {**config["model"]["llm"], "lora": dict(LORA)}}
    model, _, model_cfg = build_model_and_tokenizer(stage)
    assert model.llm.lora is not None and model_cfg["llm"]["lora"]["r"] == 4
    base = dict(model.llm.base_model.named_parameters())
    for name, p in export_model.llm.model.named_parameters():
        key = name.replace("q_proj.weight", "q_proj.base_layer.weight").replace("v_proj.weight", "v_proj.base_layer.weight")
        assert torch.equal(p, base[key]), name


def test_a_target_module_typo_is_a_config_error_naming_the_key(tiny_export):
    """peft's own refusal was reported as the LLM plugin's internal error (exit 1)."""
    from regionvlm.errors import ConfigError

    cfg = copy.deepcopy(tiny_export[2])
    cfg["model"]["llm"]["lora"] = {**LORA, "target_modules": ["q_prj"]}
    with pytest.raises(ConfigError, match=r"^model.llm.lora.target_modules: no linear layer named 'q_prj' in this "
                                          r"LLM; did you mean 'q_proj'"):
        build_model_and_tokenizer(cfg["model"])
