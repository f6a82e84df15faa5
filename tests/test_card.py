"""Export folders as model cards: what they hold, loading from the folder alone, init_from, file modes."""

import os
import shutil
import stat

import numpy as np
import pytest
import torch
import yaml

from regionvlm.card import CONFIG_FILE, TRAINING_CONFIG_FILE, load_export, read_card, save_export
from regionvlm.engine.build import build_model_and_tokenizer, init_from_architecture
from regionvlm.errors import ConfigError, UserError

QUESTION = "What is <region1>?"


@pytest.fixture(scope="module")
def tiny(tiny_export):
    return tiny_export


def test_the_export_is_a_model_card(tiny):
    model, _, config, out = tiny
    card = yaml.safe_load((out / CONFIG_FILE).read_text())
    assert list(card) == ["model", "processor", "prompts", "generation", "imports", "export"]
    assert card["processor"] == {"image_size": model.image_size, "mean": list(model.image_mean),
                                 "std": list(model.image_std), "resize_mode": "resize", "template": "plain",
                                 "max_length": 200, "num_image_tokens": model.num_image_tokens,
                                 "tokens_per_region": model.tokens_per_region}
    assert card["prompts"]["region_classification"]["vocabulary"] == ["red circle", "blue square"]
    assert "init_from" not in card["model"] and "tokenizer" not in card["model"]["llm"]
    assert "data" not in card and "synth" not in (out / CONFIG_FILE).read_text()  # no data paths in the card
    assert yaml.safe_load((out / TRAINING_CONFIG_FILE).read_text())["data"]["template"] == "plain"
    assert read_card(out)["processor"]["template"] == "plain"


def test_an_export_copied_alone_answers_as_the_original(tiny, tmp_path, monkeypatch):
    from regionvlm import RegionChat
    from regionvlm.processor import RegionProcessor

    model, tokenizer, config, out = tiny
    alone = tmp_path / "somewhere" / "model"
    shutil.copytree(out, alone)
    (alone / TRAINING_CONFIG_FILE).unlink()  # provenance only: loading must not need it
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REGIONVLM_DATA", str(tmp_path / "no-data-here"))
    chat = RegionChat.from_pretrained(alone, device="cpu")
    assert chat.processor.image.resize_mode == "resize" and chat.collator.template == "plain"
    assert chat.collator.max_length == 200
    image = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    answer = chat.ask(image, [[10, 20, 60, 70]], QUESTION, max_new_tokens=6)
    assert isinstance(answer, str)
    # the same question through the in-memory model and the training config's processing gives the same answer
    collator = RegionProcessor.from_training_config(config["data"], model, tokenizer).collator(for_generation=True,
                                                                                               process=True)
    batch = collator([chat.sample(image, [[10, 20, 60, 70]], QUESTION)])
    ids = model.generate(batch, max_new_tokens=6)
    assert tokenizer.batch_decode(ids, skip_special_tokens=True)[0].strip() == answer


def test_task_questions_use_the_prompts_the_model_was_trained_with(tiny):
    from regionvlm import RegionChat

    chat = RegionChat.from_pretrained(tiny[3], device="cpu")
    question = chat.task_question("region_classification")
    assert "red circle" in question and "blue square" in question
    assert "Region [x]" in chat.task_question("rec", expression="the dog", num_candidates=2)  # untrained: defaults


def test_an_old_export_without_a_card_is_a_clear_error(tiny, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny[3], old)
    (old / CONFIG_FILE).write_text(yaml.safe_dump(tiny[2]))  # the whole training config, as before the card
    with pytest.raises(UserError, match=r"config.yaml: not a regionvlm model card \(missing section 'processor'\)"):
        load_export(old)


@pytest.mark.parametrize("cut", [40, -10])
def test_a_truncated_weights_file_is_a_user_error(tiny, tmp_path, cut):
    from regionvlm.cli import main

    bad = tmp_path / "bad"
    shutil.copytree(tiny[3], bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[:cut])
    with pytest.raises(UserError, match=r"model.safetensors: truncated or not a safetensors file"):
        load_export(bad)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    assert main(["predict", "--model", str(bad), "--image", str(image), "--region", "box:1,1,9,9",
                 "--prompt", QUESTION]) == 2


def test_init_from_applies_the_stages_keys_and_starts_from_the_exports_weights(tiny):
    model, _, config, out = tiny
    stage = {**config["model"], "init_from": str(out), "trainable": ["llm"]}
    stage["llm"] = {**stage["llm"], "gradient_checkpointing": True}
    built, _, model_cfg = build_model_and_tokenizer(stage)
    assert model_cfg["llm"]["gradient_checkpointing"] is True and model_cfg["trainable"] == ["llm"]
    assert built.llm.model.model.gradient_checkpointing
    for (name, a), (_, b) in zip(model.state_dict().items(), built.state_dict().items()):
        assert torch.equal(a, b), name


def test_init_from_rejects_what_the_weights_cannot_fit(tiny):
    _, _, config, out = tiny
    stage = {**config["model"], "init_from": str(out)}
    stage["llm"] = {**stage["llm"], "config": {**stage["llm"]["config"], "num_hidden_layers": 2}}
    with pytest.raises(ConfigError, match=r"model.init_from: the export's weights do not fit .*"
                                          r"llm.config.num_hidden_layers=2"):
        build_model_and_tokenizer(stage)
    stage = {**config["model"], "init_from": str(out), "region_extractor": {"type": "roi_align"}}
    with pytest.raises(ConfigError, match="model.region_extractor.type: 'roi_align' differs from the init_from"):
        build_model_and_tokenizer(stage)


def test_init_components_loads_only_the_named_components(tiny):
    model, _, config, out = tiny
    stage = {**config["model"], "init_components": {"from": str(out), "components": ["vision_encoder",
                                                                                     "region_extractor"]}}
    # a different LLM width: the projector and LLM cannot come from the export, the vision side can
    stage["llm"] = {**stage["llm"], "config": {**stage["llm"]["config"], "hidden_size": 64}}
    torch.manual_seed(123)
    built, _, _ = build_model_and_tokenizer(stage)
    for name in ("vision_encoder", "region_extractor"):
        for key, value in getattr(model, name).state_dict().items():
            assert torch.equal(value, getattr(built, name).state_dict()[key]), f"{name}.{key}"
    trained = dict(model.projector.named_parameters())
    assert not all(torch.equal(p, trained[k]) for k, p in built.projector.named_parameters() if k in trained)


def test_init_components_errors_name_the_key(tiny, tmp_path):
    _, _, config, out = tiny
    stage = {**config["model"], "init_components": {"from": str(tmp_path), "components": ["vision_encoder"]}}
    with pytest.raises(ConfigError, match="model.init_components.from: no export weights at"):
        build_model_and_tokenizer(stage)
    stage["init_components"] = {"from": str(out), "components": ["vision_tower"]}
    with pytest.raises(ConfigError, match="model.init_components.components: 'vision_tower' is not a component"):
        build_model_and_tokenizer(stage)
    stage["init_components"] = {"from": str(out), "components": ["projector"]}
    stage["llm"] = {**stage["llm"], "config": {**stage["llm"]["config"], "hidden_size": 64}}
    with pytest.raises(ConfigError, match=r"model.init_components: 'projector\..*' is \("):
        build_model_and_tokenizer(stage)
    stage["init_components"] = {"from": str(out)}
    with pytest.raises(ConfigError, match="model.init_components: give"):
        build_model_and_tokenizer(stage)


def test_init_from_architecture_merges_and_lists_changes():
    export = {"llm": {"type": "x", "config": {"a": 1, "b": 2}}, "global_grid": 4}
    stage = {"llm": {"type": "x", "pretrained": "hub/id", "config": {"b": 3}}, "global_grid": 4, "init_from": "e"}
    merged, changed = init_from_architecture(stage, export, "e")
    assert merged == {"llm": {"type": "x", "config": {"a": 1, "b": 3}}, "global_grid": 4}
    assert changed == ["llm.config.b=3"]  # pretrained is superseded by the export's weights, not a change


def test_outputs_get_the_users_umask(tiny, tmp_path):
    from regionvlm.io import write_text

    model, tokenizer, config, _ = tiny
    old = os.umask(0o022)
    try:
        out = save_export(tmp_path / "export", model, tokenizer, config)
        write_text(tmp_path / "results.md", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for path in [*out.rglob("*"), tmp_path / "results.md"]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path


def test_an_export_in_the_earlier_card_layout_loads_and_answers_the_same(tiny, tmp_path):
    """Cards written before the processor was one object keep the template and context length in a ``text:``
    section and no token counts: they load as they are; a card whose counts disagree with its model is refused
    with a one-line re-export message."""
    from regionvlm import RegionChat

    model, tokenizer, config, out = tiny
    old = tmp_path / "old"
    shutil.copytree(out, old)
    card = yaml.safe_load((old / CONFIG_FILE).read_text())
    processor = card.pop("processor")
    card = {"model": card["model"],
            "processor": {k: processor[k] for k in ("image_size", "mean", "std", "resize_mode")},
            "text": {"template": processor["template"], "max_length": processor["max_length"]},
            "prompts": card["prompts"], "generation": card["generation"], "export": card["export"]}
    (old / CONFIG_FILE).write_text(yaml.safe_dump(card, sort_keys=False))
    image = np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    new_chat, old_chat = RegionChat.from_pretrained(out, device="cpu"), RegionChat.from_pretrained(old, device="cpu")
    assert old_chat.processor.to_card() == new_chat.processor.to_card()
    assert old_chat.ask(image, [[5, 5, 40, 40]], QUESTION, max_new_tokens=5) == \
        new_chat.ask(image, [[5, 5, 40, 40]], QUESTION, max_new_tokens=5)
    # re-exporting the old card writes today's layout
    again = save_export(tmp_path / "again", old_chat.model, tokenizer, old_chat.card)
    assert read_card(again)["processor"] == new_chat.processor.to_card() and "text" not in read_card(again)

    card["processor"]["tokens_per_region"] = model.tokens_per_region + 1
    (old / CONFIG_FILE).write_text(yaml.safe_dump(card, sort_keys=False))
    with pytest.raises(UserError, match=r"processor.tokens_per_region is \d+ but the model's is \d+; re-export it"):
        RegionChat.from_pretrained(old, device="cpu")


def test_a_timm_encoder_exports_without_its_pretrained_flag_and_loads_offline(tmp_path, monkeypatch):
    """A timm encoder trained from timm's weights (``pretrained: true``, or a checkpoint file) is written to the
    card with ``pretrained: false``: loading the export reads the folder alone, never timm's download."""
    import timm
    from conftest import tiny_training_config

    from regionvlm.engine.plan import architecture_only

    torch.manual_seed(0)
    weights = tmp_path / "vit.pth"
    timm_node = {"type": "timm", "name": "vit_tiny_patch16_224", "img_size": 32,
                 "model_kwargs": {"depth": 1, "embed_dim": 48, "num_heads": 2}}
    torch.save(timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32,
                                 **timm_node["model_kwargs"]).state_dict(), weights)
    config = tiny_training_config()
    config["model"]["vision_encoder"] = {**timm_node, "pretrained": str(weights)}
    model, tokenizer, _ = build_model_and_tokenizer(config["model"])
    out = save_export(tmp_path / "export", model, tokenizer, config)
    assert read_card(out)["model"]["vision_encoder"]["pretrained"] is False
    # a config that said `pretrained: true` (timm's download) is written the same way, by the card and by plan
    config["model"]["vision_encoder"]["pretrained"] = True
    out_true = save_export(tmp_path / "export_true", model, tokenizer, config)
    assert read_card(out_true)["model"]["vision_encoder"]["pretrained"] is False
    assert architecture_only(config["model"])["vision_encoder"]["pretrained"] is False

    def no_download(*args, **kwargs):
        raise AssertionError("loading an export must not download weights")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", no_download)
    loaded, _, _ = load_export(out_true)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.vision_encoder(x), model.eval().vision_encoder(x))
