"""Data-parallel training under a real 2-process gloo run (Lightning ``strategy=ddp`` on CPU): the model is built
in ``configure_model`` on every rank, every parameter takes part in the loss (no ``find_unused_parameters``),
both ranks generate, and the weights after N steps equal one process's on the same global batch.

Run as a script, this file is the training job itself: Lightning's DDP launcher starts the second rank by
re-running the same command line (``python this_file.py CONFIG DEVICES OUT``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TINY = Path(__file__).resolve().parents[1] / "projects" / "rgpt" / "tiny"
STEPS = 3
GLOBAL_BATCH = 4


def train_and_report(config: dict, devices: int, out: Path) -> None:
    """Train per ``config`` on ``devices`` CPU processes; each rank writes ``rank<k>.pt`` with its final weights
    and the texts it generated at the validation."""
    import lightning as L

    from regionvlm.engine.callbacks import GenerationSamples
    from regionvlm.engine.module import RegionVLMModule
    from regionvlm.engine.trainer import build_datamodule, build_trainer

    L.seed_everything(config["seed"], verbose=False)
    module = RegionVLMModule(config)
    built_in_init = module.model is not None
    datamodule = build_datamodule(config, module)
    samples = GenerationSamples(None, num_samples=2)
    trainer = build_trainer(config, None, callbacks=[samples], devices=devices,
                            strategy="ddp" if devices > 1 else "auto", enable_progress_bar=False)
    trainer.fit(module, datamodule=datamodule)
    torch.save({"world_size": trainer.world_size, "built_in_init": built_in_init, "steps": trainer.global_step, "texts": samples.last_texts,
                "state": {k: v.detach().clone() for k, v in module.model.state_dict().items()}},
               out / f"rank{trainer.global_rank}.pt")


@pytest.fixture(scope="module")
def job(tiny_workspace, tmp_path_factory):
    """A resolved tiny config that trains every component from a fixed initial export, on region questions whose
    answers all have the same token count (so each rank's mean loss weighs its tokens as the global mean does)."""
    from omegaconf import OmegaConf

    from regionvlm.card import save_export
    from regionvlm.config import load_config
    from regionvlm.engine.module import RegionVLMModule

    root = tmp_path_factory.mktemp("ddp")
    synth = tiny_workspace / "data" / "synth"
    rows = [json.loads(line) for line in (synth / "spatial" / "spatial_train.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows):
        row["conversations"][1]["value"] = ("left", "right")[i % 2]  # same token count either way
    (root / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    node = {"type": "conversations", "path": str(root / "qa.jsonl"), "image_root": str(synth / "images")}
    config = OmegaConf.to_container(load_config(TINY / "stage1.yaml"), resolve=True)
    config["data"].update(train=[node], val=[{**node, "max_samples": 2}], num_workers=0, val_batch_size=2)
    config["optim"].update(lr=1e-4, warmup_ratio=0.0)
    config["trainer"].update(max_steps=STEPS, val_check_interval=STEPS, limit_val_batches=1, log_every_n_steps=1)
    config["generation"]["max_new_tokens"] = 4
    model_cfg = config["model"]
    model_cfg["trainable"] = ["vision_encoder", "feature_refiner", "region_extractor", "projector", "llm"]
    torch.manual_seed(0)
    init = RegionVLMModule(config)
    init.configure_model()
    save_export(root / "init", init.model, init.tokenizer, config)
    model_cfg["init_from"] = str(root / "init")
    return config, root


def test_ddp_two_processes_match_one_process_on_the_same_global_batch(job):
    from safetensors.torch import load_file

    config, root = job
    ddp_out, single_out = root / "ddp", root / "single"
    ddp_out.mkdir()
    single_out.mkdir()
    ddp_config = {**config, "data": {**config["data"], "batch_size": GLOBAL_BATCH // 2}}
    (root / "ddp.json").write_text(json.dumps(ddp_config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, __file__, str(root / "ddp.json"), "2", str(ddp_out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train_and_report({**config, "data": {**config["data"], "batch_size": GLOBAL_BATCH}}, 1, single_out)

    ranks = [torch.load(ddp_out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    single = torch.load(single_out / "rank0.pt", weights_only=True)
    assert [r["world_size"] for r in ranks] == [2, 2] and single["world_size"] == 1
    assert not any(r["built_in_init"] for r in (*ranks, single))  # built by Lightning in configure_model
    assert [r["steps"] for r in (*ranks, single)] == [STEPS] * 3
    # both ranks generated (the same answers: same weights, same prompts, greedy)
    assert len(ranks[0]["texts"]) == 2 and all(ranks[0]["texts"]) and ranks[0]["texts"] == ranks[1]["texts"]
    assert single["texts"] == ranks[0]["texts"]
    init = load_file(str(root / "init" / "model.safetensors"))
    key = next(k for k in init if k.startswith("llm.") and k.endswith("q_proj.weight"))
    assert not torch.equal(init[key], single["state"][key])  # it trained
    for name, value in single["state"].items():
        assert torch.equal(ranks[0]["state"][name], ranks[1]["state"][name]), name
        torch.testing.assert_close(ranks[0]["state"][name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_mixture_sampler_shards_give_the_single_process_batches():
    from regionvlm.data.datamodule import MixtureSampler

    def batches(order, size):
        return [sorted(order[i:i + size]) for i in range(0, len(order) - size + 1, size)]

    single = list(MixtureSampler([7, 30], [2.0, 1.0], num_samples=23, seed=3))
    shards = [list(MixtureSampler([7, 30], [2.0, 1.0], num_samples=23, seed=3, num_replicas=2, rank=r))
              for r in (0, 1)]
    assert [len(s) for s in shards] == [12, 12]  # 23 padded to 24 by wrapping around
    assert sorted(shards[0] + shards[1]) == sorted(single + single[:1])
    # batch k of each rank (size 3) together are batch k of one process with batch size 6
    together = [sorted(a + b) for a, b in zip(batches(shards[0], 3), batches(shards[1], 3))]
    assert together[:3] == batches(single, 6)  # (the 4th holds the wrapped-around sample)


def test_every_parameter_of_the_tiny_model_reaches_the_loss(job):
    """What DDP without ``find_unused_parameters`` needs: a backward pass gives every parameter a gradient (the
    CLIP tower's post-layernorm, which patch features never reach, is dropped at build time)."""
    from regionvlm.engine.module import RegionVLMModule
    from regionvlm.engine.trainer import build_datamodule

    config, _ = job
    module = RegionVLMModule(config)
    module.configure_model()
    batch = next(iter(build_datamodule(config, module).train_dataloader()))
    module.model(batch)["loss"].backward()
    names = [n for n, p in module.model.named_parameters()]
    assert not any("post_layernorm" in n for n in names)
    assert [n for n, p in module.model.named_parameters() if p.grad is None] == []


def test_timm_encoder_drops_what_only_the_classifier_head_uses(tmp_path):
    """ConvNeXt's head norm acts on the pooled output only: after a strict load of a checkpoint that has it, it is
    replaced, and every parameter left gets a gradient from the feature map (which is unchanged)."""
    import timm

    from regionvlm.plugins.vision import TimmVisionEncoder

    torch.manual_seed(0)
    reference = timm.create_model("convnext_atto", pretrained=False, num_classes=0).eval()
    assert any(n.startswith("head.norm.") for n, _ in reference.named_parameters())
    torch.save(reference.state_dict(), tmp_path / "convnext.pth")
    encoder = TimmVisionEncoder("convnext_atto", pretrained=str(tmp_path / "convnext.pth")).eval()
    assert not any(".head.norm." in n for n, _ in encoder.named_parameters())
    x = torch.randn(2, 3, 64, 64)
    features = encoder(x)
    torch.testing.assert_close(features, reference.forward_features(x), rtol=0, atol=0)
    features.sum().backward()
    assert [n for n, p in encoder.named_parameters() if p.grad is None] == []


def test_configure_model_builds_the_same_weights_whatever_ran_before(job):
    """Each rank calls configure_model after its own start-up work: the build is seeded by the config's seed."""
    from regionvlm.engine.module import RegionVLMModule

    config, _ = job
    config = {**config, "model": {k: v for k, v in config["model"].items() if k != "init_from"}}
    built = []
    for noise in (0, 1000):
        torch.randn(noise)
        module = RegionVLMModule(config)
        module.configure_model()
        built.append(module.model.state_dict())
    assert all(torch.equal(built[0][k], built[1][k]) for k in built[0])
    other = RegionVLMModule({**config, "seed": 1})
    other.configure_model()
    key = next(k for k in built[0] if k.endswith("q_proj.weight"))
    assert not torch.equal(other.model.state_dict()[key], built[0][key])


def test_an_empty_batch_joins_the_gradient_all_reduce_with_zeros(job):
    """A batch whose samples were all dropped by truncation: alone, the step is skipped; under DDP the rank must
    still take part in the all-reduce, with a zero gradient for every trainable parameter."""
    from types import SimpleNamespace

    from regionvlm.engine.module import RegionVLMModule

    config, _ = job
    module = RegionVLMModule(config)
    module.configure_model()
    module.trainer = SimpleNamespace(world_size=1)
    assert module.training_step([], 0) is None
    module.trainer = SimpleNamespace(world_size=2)
    loss = module.training_step([], 0)
    loss.backward()
    assert loss.item() == 0.0
    grads = [p.grad for p in module.model.parameters() if p.requires_grad]
    assert grads and all(g is not None and not g.any() for g in grads)


if __name__ == "__main__":
    torch.set_num_threads(1)
    train_and_report(json.loads(Path(sys.argv[1]).read_text()), int(sys.argv[2]), Path(sys.argv[3]))
