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
    cfg = {"model": {"llm": {"type": "hf_causal_lm", "pretrained": "org/llm"}},
           "data": {"train": [{"type": "llava", "path": str(tmp_path / "a.json")}]}}
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


def _repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]


def test_config_is_the_dry_run_of_train(capsys, monkeypatch):
    """`regionvlm config` checks names and keys as train does (exit 2, one line), without looking for weights or
    data: the full-scale recipe, whose weights and data are absent here, prints fine."""
    from regionvlm.cli import main

    monkeypatch.chdir(_repo_root())
    assert main(["config", "projects/rgpt/stage2.yaml", "model.region_extractor.type=mask_pol"]) == 2
    assert capsys.readouterr().err == (
        "error: projects/rgpt/stage2.yaml model.region_extractor.type: no region_extractor named 'mask_pol'; "
        "did you mean 'mask_pool'? known: mask_pool, roi_align, zero\n")
    assert main(["config", "projects/rgpt/stage2.yaml", "model.projector.depht=3"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: projects/rgpt/stage2.yaml model.projector.depht: unexpected key for projector 'mlp2x_gelu' known: ")
    assert main(["config", "projects/rgpt/stage2.yaml"]) == 0
    assert "lmsys/vicuna-7b-v1.5" in capsys.readouterr().out


def test_unknown_keys_are_reported_before_missing_files(capsys, monkeypatch):
    from regionvlm.cli import main

    monkeypatch.chdir(_repo_root())
    assert main(["train", "projects/rgpt/stage2.yaml", "trainer.max_stepz=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: projects/rgpt/stage2.yaml trainer.max_stepz: unexpected key for Lightning Trainer; "
                          "did you mean 'max_steps'")
    assert len(err.splitlines()) == 1 and "no such file" not in err


@pytest.mark.parametrize("override, message", [
    ("model.vision_encoder.select_layr=-2",
     "model.vision_encoder.select_layr: unexpected key for vision_encoder 'hf_clip'; did you mean 'select_layer'"),
    ("model.projector.in_channels=3", "model.projector.in_channels: is set by the code at build time"),
    ("model.share_projectr=false", "model.share_projectr: unknown key; did you mean 'share_projector'"),
    ("data.batch_sise=2", "data.batch_sise: unexpected key for the data module; did you mean 'batch_size'"),
    ("data.processor.resize=pad", "data.processor.resize: unexpected key for the image processor; "
                                  "did you mean 'resize_mode'?"),
    ("data.train.0.image_rot=x", "data.train[0].image_rot: unexpected key for dataset 'coco_instances'; "
                                 "did you mean 'image_root'?"),
    ("~data.train.0.ann_file", "data.train[0].ann_file: required key missing for dataset 'coco_instances'"),
    ("data.train.0.prompt.vocabulary=[a]", None),
    ("trainer.logger=true", "trainer.logger: is set by the code at build time"),
    ("eval.benchmarks.poep={limit: 3}", "eval.benchmarks.poep: no benchmark named 'poep'; did you mean 'pope'?"),
    ("eval.benchmarks.pope={limit: 3}", None),
    # the eval section and a benchmark's own keys, as `regionvlm eval` builds them (#20)
    ("eval.batch_sizee=3", "eval.batch_sizee: unexpected key for the eval section; did you mean 'batch_size'?"),
    ("eval.benchmarks.pope={limt: 3}", "eval.benchmarks.pope.limt: unexpected key for benchmark 'pope'; "
                                       "did you mean 'limit'?"),
    ("eval.batch_size=many", "eval.batch_size: expected a number"),
    # Trainer arguments build_trainer sets itself fail in `config`, not once the Trainer is built
    ("trainer.default_root_dir=/tmp/x", "trainer.default_root_dir: is set by the code at build time"),
    # the processor's keys of the data section
    ("data.template=vicunna", "data.template: unknown chat template 'vicunna'; did you mean 'vicuna_v1'?"),
    ("data.max_length=long", "data.max_length: expected a positive number of tokens or null"),
    ("data.processor.image_size=224", "data.processor.image_size: is set by the code at build time"),
    # what train or eval caught only after the model was built (#24 item 5)
    ("model.trainable=[projectr]", "model.trainable[0]: 'projectr' names no component; did you mean 'projector'"),
    ("model.trainable=[llm.*lora_*,projector]", None),
    ("model.llm.lora={rank: 8}", "model.llm.lora.rank: unexpected key for LoraSettings known: r, alpha"),
    ("optim.lr_multipliers={llmm: 0.1}", "optim.lr_multipliers.llmm: 'llmm' names no component; did you mean 'llm'"),
    ("data.train.0.prompt.vocabularry=x", "data.train[0].prompt.vocabularry: unexpected key for prompt "
                                          "'region_classification'; did you mean 'vocabulary'?"),
])
def test_check_config_covers_every_section(override, message):
    from omegaconf import OmegaConf

    from regionvlm.config import load_config
    from regionvlm.engine.preflight import check_config

    config = OmegaConf.to_container(load_config(_repo_root() / "projects/rgpt/tiny/stage2.yaml", [override]),
                                    resolve=True)
    if message is None:
        check_config(config, "stage2.yaml")
        return
    with pytest.raises(ConfigError) as e:
        check_config(config, "stage2.yaml")
    assert str(e.value).startswith(f"stage2.yaml {message}")


@pytest.mark.parametrize("overrides, message", [
    (["trainer.strategy.use_orig_params=true", "trainer.strategy.forward_prefetch=true"], None),
    (["trainer.strategy.use_orig_paramz=true"],
     "trainer.strategy.use_orig_paramz: unexpected key for FSDP strategy; did you mean 'use_orig_params'?"),
    (["trainer.strategy.wrap=[no.such.Layer]"], "trainer.strategy.wrap: no class 'no.such.Layer'"),
])
def test_an_fsdp_node_takes_the_arguments_lightning_passes_to_torch(overrides, message):
    """FSDPStrategy forwards its other keyword arguments to torch's FullyShardedDataParallel: those are keys of
    the node (the check used to follow ``**kwargs`` to the base class and refuse them)."""
    from omegaconf import OmegaConf

    from regionvlm.config import load_config
    from regionvlm.engine.preflight import check_config
    from regionvlm.engine.strategies import build_strategy

    config = OmegaConf.to_container(load_config(_repo_root() / "projects/rgpt/scale/stage2_fsdp_8gpu.yaml", overrides),
                                    resolve=True)
    if message is None:
        check_config(config, "fsdp.yaml")
        strategy = build_strategy(config["trainer"]["strategy"])
        assert strategy.kwargs["use_orig_params"] is True and strategy.kwargs["forward_prefetch"] is True
        return
    with pytest.raises(ConfigError, match=f"^fsdp.yaml {message}"):
        check_config(config, "fsdp.yaml")
