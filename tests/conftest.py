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
