"""Ready strategy configs (projects/rgpt/scale/): `regionvlm plan` reads each; strategy nodes build Lightning's
strategies with the configured wrap unit, checkpointing and offload; a missing package is one clear line."""

import json
from pathlib import Path

import pytest

from regionvlm.cli import main
from regionvlm.engine.strategies import build_strategy, strategy_name
from regionvlm.errors import ConfigError

SCALE = Path(__file__).resolve().parents[1] / "projects" / "rgpt" / "scale"
LAYER = "transformers.models.llama.modeling_llama.LlamaDecoderLayer"


@pytest.mark.parametrize("name,strategy,gpus,lora", [
    ("stage1_1gpu", "auto", 1, False),
    ("stage2_lora_1gpu", "auto", 1, True),
    ("stage2_fsdp_8gpu", "fsdp", 8, False),
    ("stage2_zero3_8gpu", "deepspeed_stage_3", 8, False),
    ("stage2_multinode", "fsdp", 16, False),
])
def test_plan_reads_every_strategy_config(capsys, name, strategy, gpus, lora):
    assert main(["plan", str(SCALE / f"{name}.yaml"), "--json"]) == 0
    setting = json.loads(capsys.readouterr().out)["setting"]
    assert (setting["strategy"], setting["gpus"], bool(setting["lora"])) == (strategy, gpus, lora)


def test_sharding_shrinks_the_per_gpu_estimate(capsys):
    totals = {}
    for name in ("stage2_lora_1gpu", "stage2_fsdp_8gpu"):
        assert main(["plan", str(SCALE / f"{name}.yaml"), "--json", "model.llm.lora=null",
                     "model.trainable=[feature_refiner,region_extractor,projector,llm]"]) == 0
        totals[name] = json.loads(capsys.readouterr().out)["memory_gib"]
    weights = {k: v["weights"] for k, v in totals.items()}
    assert weights["stage2_fsdp_8gpu"] == pytest.approx(weights["stage2_lora_1gpu"] / 8, rel=1e-6)


def test_strategy_names():
    assert strategy_name(None) == "auto" and strategy_name("ddp") == "ddp"
    assert strategy_name({"type": "fsdp", "wrap": [LAYER]}) == "fsdp"
    assert strategy_name({"type": "deepspeed", "stage": 3}) == "deepspeed_stage_3"
    assert strategy_name({"type": "deepspeed", "stage": 2, "offload_optimizer": True}) == "deepspeed_stage_2_offload"


def test_fsdp_node_builds_lightnings_strategy():
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    s = build_strategy({"type": "fsdp", "wrap": [LAYER], "activation_checkpointing": True, "cpu_offload": True,
                        "sharding_strategy": "SHARD_GRAD_OP"})
    assert isinstance(s, FSDPStrategy)
    assert s.cpu_offload.offload_params is True
    assert s.kwargs["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer}
    assert s._activation_checkpointing_kwargs  # the wrap classes are checkpointed
    assert str(s.sharding_strategy).endswith("SHARD_GRAD_OP")
    assert build_strategy("ddp") == "ddp"


@pytest.mark.parametrize("node,message", [
    ({"type": "fsdp", "wrap": ["transformers.NoSuchLayer"]}, r"trainer.strategy.wrap: no class 'transformers.NoSuch"),
    ({"type": "fsdp", "activation_checkpointing": True}, "needs 'wrap' classes"),
    ({"type": "fsdp", "wrap": [LAYER], "cpu_ofload": True}, "trainer.strategy"),
    ({"type": "fdsp"}, "expected fsdp or deepspeed"),
])
def test_bad_strategy_nodes(node, message):
    with pytest.raises(ConfigError, match=message):
        build_strategy(node)


def test_missing_deepspeed_is_named():
    from importlib.util import find_spec

    if find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    with pytest.raises(ConfigError, match="needs the 'deepspeed' package"):
        build_strategy({"type": "deepspeed", "stage": 3})


@pytest.mark.skipif(not __import__("torch").cuda.is_available(),
                    reason="Lightning runs FSDP only on GPUs (its accelerator check refuses accelerator=cpu)")
def test_fsdp_trains_the_tiny_preset_on_a_gpu(tiny_workspace, tmp_path, monkeypatch):
    """The tiny preset under the FSDP node of the 8-GPU config (decoder layer as unit, activation checkpointing),
    on the GPUs there are; the checkpoint exports."""
    from omegaconf import OmegaConf

    from regionvlm.config import load_config
    from regionvlm.engine.checkpoint import export_checkpoint
    from regionvlm.engine.trainer import fit

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    cfg = OmegaConf.to_container(load_config("projects/rgpt/tiny/stage1.yaml"), resolve=True)
    cfg["data"].update(batch_size=4, num_workers=0, val=[])
    cfg["trainer"].update(accelerator="gpu", devices=1, max_steps=3, limit_val_batches=0, enable_progress_bar=False,
                          strategy={"type": "fsdp", "wrap": [LAYER], "activation_checkpointing": True,
                                    "state_dict_type": "full"})
    fit(cfg, tmp_path / "run")
    assert export_checkpoint(tmp_path / "run", tmp_path / "export").is_dir()
