import os

import pytest

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
