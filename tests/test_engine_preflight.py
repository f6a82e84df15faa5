import pytest

from regionvlm.engine.preflight import check_inputs, missing_data, missing_weights
from regionvlm.errors import ConfigError


def test_missing_data_lists_every_path_key(tmp_path):
    (tmp_path / "ann.json").write_text("{}")
    cfg = {"data": {"train": [{"type": "coco_instances", "ann_file": str(tmp_path / "ann.json"),
                               "image_root": str(tmp_path / "nope")}],
                    "val": [{"type": "llava", "path": str(tmp_path / "missing.json"), "prompt": {"type": "x"}}]}}
    assert missing_data(cfg) == [
        f"data.train[0].image_root: no such file or folder '{tmp_path / 'nope'}'",
        f"data.val[0].path: no such file or folder '{tmp_path / 'missing.json'}'"]


def test_missing_weights_only_when_offline_and_uncached(tmp_path, monkeypatch):
    model = {"vision_encoder": {"type": "hf_clip", "pretrained": "no-such-org/no-such-model"},
             "llm": {"type": "hf_causal_lm", "pretrained": str(tmp_path)}}  # a local folder is fine
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert missing_weights(model) == ["model.vision_encoder.pretrained: 'no-such-org/no-such-model' is not a "
                                      "local folder and not in the Hugging Face cache (HF_HUB_OFFLINE=1)"]
    assert missing_weights({**model, "init_from": "runs/x/export"}) == []  # weights come from the export
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert missing_weights(model) == []  # online: transformers will download


def test_check_inputs_one_line_with_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = {"model": {"llm": {"pretrained": "org/llm"}}, "data": {"train": [{"path": str(tmp_path / "a.json")}]}}
    with pytest.raises(ConfigError) as e:
        check_inputs(cfg)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("model.llm.pretrained: 'org/llm'")
    assert "(and 1 more: data.train[0].path" in msg and msg.endswith("make demo (projects/rgpt/tiny)")
    check_inputs({"model": {}, "data": {}})  # nothing to check: no error


def test_unknown_component_names_come_first_with_the_file(tmp_path):
    cfg = {"model": {"region_extractor": {"type": "mask_pol"}},
           "data": {"train": [{"type": "coco_instances", "ann_file": str(tmp_path / "missing.json"),
                               "prompt": {"type": "region_clasification"}}]}}
    with pytest.raises(ConfigError, match=r"^cfg.yaml model.region_extractor.type: no region_extractor named "
                                          r"'mask_pol'; did you mean 'mask_pool'\?"):
        check_inputs(cfg, "cfg.yaml")
    cfg["model"]["region_extractor"]["type"] = "mask_pool"
    with pytest.raises(ConfigError, match=r"^cfg.yaml data.train\[0\].prompt.type: no prompt named "
                                          r"'region_clasification'; did you mean 'region_classification'\?"):
        check_inputs(cfg, "cfg.yaml")


def test_readme_error_example(capsys, monkeypatch):
    from pathlib import Path

    from regionvlm.cli import main

    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the README runs it from the repository root
    assert main(["train", "projects/rgpt/stage2.yaml", "model.region_extractor.type=mask_pol"]) == 2
    assert capsys.readouterr().err == (
        "error: projects/rgpt/stage2.yaml model.region_extractor.type: no region_extractor named 'mask_pol'; "
        "did you mean 'mask_pool'? known: mask_pool, roi_align, zero\n")
