"""Exact mid-epoch resume (issue 12): the training loader's position is part of the checkpoint, so a run stopped
inside an epoch and resumed ends with the same weights as an uninterrupted run (CPU, fixed seed), and Lightning
no longer warns that the loader is not resumable."""

import warnings

import pytest
import torch

from regionvlm.data.datamodule import MixtureSampler


def test_sampler_resume_skips_what_was_trained():
    s = MixtureSampler([10, 7], [1.0, 1.0], seed=3)
    s.set_epoch(2)
    full = list(s)
    s.resume_at = (2, 5)
    assert list(s) == full[5:]
    assert list(s) == full  # a resume position is used once
    s.resume_at = (1, 5)  # saved in another epoch (the checkpoint closed its epoch): nothing skipped
    assert list(s) == full


def config_for(tiny_workspace, steps: int) -> dict:
    from omegaconf import OmegaConf

    from regionvlm.config import load_config

    cfg = OmegaConf.to_container(load_config("projects/rgpt/tiny/stage1.yaml"), resolve=True)
    cfg["model"]["trainable"] = ["vision_encoder", "feature_refiner", "region_extractor", "projector", "llm"]
    cfg["data"].update(batch_size=4, num_workers=0, val=[])
    cfg["optim"].update(lr=1e-3, schedule="constant", warmup_ratio=0.0)
    cfg["trainer"].update(max_steps=steps, limit_val_batches=0, enable_progress_bar=False, log_every_n_steps=1)
    return cfg


def train(config: dict, out, ckpt_path=None) -> dict:
    """Train per ``config``, checkpointing every 2 steps into ``out`` (step=2.ckpt is mid-epoch); the final
    weights."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from regionvlm.engine.module import RegionVLMModule
    from regionvlm.engine.trainer import build_datamodule, build_trainer

    L.seed_everything(config["seed"], verbose=False)
    module = RegionVLMModule(config)
    every = ModelCheckpoint(dirpath=str(out), filename="{step}", every_n_train_steps=2, save_top_k=-1)
    trainer = build_trainer(config, out, callbacks=[every])
    trainer.fit(module, datamodule=build_datamodule(config, module), ckpt_path=ckpt_path)
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


@pytest.fixture
def repo_cwd(monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).parents[1])


def test_mid_epoch_resume_equals_uninterrupted_run(tiny_workspace, tmp_path, repo_cwd):
    straight = train(config_for(tiny_workspace, 5), tmp_path)
    mid = tmp_path / "step=2.ckpt"
    ckpt = torch.load(mid, map_location="cpu", weights_only=True)
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batches": 2}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = train(config_for(tiny_workspace, 5), tmp_path / "again", ckpt_path=str(mid))
    assert not [w for w in caught if "not resumable" in str(w.message)]
    first = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    assert any(not torch.equal(first[k], straight[k]) for k in straight)  # it trained on after step 2
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=0, atol=0)


def test_resume_without_the_position_differs(tiny_workspace, tmp_path, repo_cwd, monkeypatch):
    """The check above can fail: restarting the epoch's order (the old behaviour) gives other weights."""
    from regionvlm.data import datamodule

    straight = train(config_for(tiny_workspace, 5), tmp_path)
    monkeypatch.setattr(datamodule.ResumableLoader, "load_state_dict", lambda self, state: None)
    resumed = train(config_for(tiny_workspace, 5), tmp_path / "again", ckpt_path=str(tmp_path / "step=2.ckpt"))
    assert any(not torch.equal(resumed[k], straight[k]) for k in straight)


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
