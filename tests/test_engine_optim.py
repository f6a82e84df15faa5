import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from regionvlm.config import OptimConfig
from regionvlm.engine.optim import apply_trainable, build_optimizer, lr_lambda, parameter_groups
from regionvlm.errors import ConfigError


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.vision_encoder = nn.Linear(4, 4)
        self.projector = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.llm = nn.Linear(4, 2)

    def forward(self, x):
        return self.llm(self.projector(self.vision_encoder(x)))


def test_trainable_list_freezes_the_rest():
    m = Toy()
    state = apply_trainable(m, trainable=["projector"])
    assert state == {"vision_encoder": False, "projector": True, "llm": False}
    assert all(p.requires_grad for p in m.projector.parameters())
    assert not any(p.requires_grad for p in m.llm.parameters())


def test_freeze_list_and_unknown_names():
    m = Toy()
    assert apply_trainable(m, freeze=["vision_encoder"]) == {"vision_encoder": False, "projector": True, "llm": True}
    with pytest.raises(ConfigError, match=r"model.trainable\[1\]: no component 'projecter'; components: "):
        apply_trainable(m, trainable=["llm", "projecter"])
    with pytest.raises(ConfigError, match="either 'trainable' or 'freeze'"):
        apply_trainable(m, trainable=["llm"], freeze=["projector"])


def test_frozen_unchanged_trainable_changed_after_a_step():
    torch.manual_seed(0)
    m = Toy()
    apply_trainable(m, trainable=["projector", "llm"])
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = build_optimizer(m, OmegaConf.structured(OptimConfig(lr=0.1, warmup_ratio=0.0)), total_steps=10)["optimizer"]
    m(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()
    after = m.state_dict()
    assert torch.equal(before["vision_encoder.weight"], after["vision_encoder.weight"])
    assert not torch.equal(before["projector.0.weight"], after["projector.0.weight"])
    assert not torch.equal(before["llm.weight"], after["llm.weight"])


def test_parameter_groups_multipliers_and_no_decay_on_norms_and_biases():
    m = Toy()
    apply_trainable(m, trainable=["projector", "llm"])
    groups = parameter_groups(m, lr=1.0, weight_decay=0.1, lr_multipliers={"llm": 0.5})
    summary = sorted((g["name"], g["lr"], g["weight_decay"], len(g["params"])) for g in groups)
    # projector: one 2-D weight (decay) + linear bias, LN weight, LN bias (no decay); llm: weight + bias
    assert summary == [("llm", 0.5, 0.0, 1), ("llm", 0.5, 0.1, 1), ("projector", 1.0, 0.0, 3),
                       ("projector", 1.0, 0.1, 1)]
    with pytest.raises(ConfigError, match=r"optim.lr_multipliers.lm: no component 'lm'"):
        parameter_groups(m, 1.0, 0.0, {"lm": 2.0})


def test_all_frozen_is_an_error():
    m = Toy()
    apply_trainable(m, trainable=[])
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_optimizer(m, OmegaConf.structured(OptimConfig()), total_steps=10)


def test_warmup_cosine_known_values():
    f = lr_lambda(total_steps=100, warmup_ratio=0.03, schedule="cosine")
    assert [f(0), f(1), f(2)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert f(3) == pytest.approx(1.0)
    mid = 3 + (100 - 3) / 2
    assert f(int(mid)) == pytest.approx(0.5 * (1 + math.cos(math.pi * (int(mid) - 3) / 97)))
    assert f(100) == pytest.approx(0.0, abs=1e-12)
    g = lr_lambda(100, 0.0, "cosine", min_lr_ratio=0.1)
    assert g(0) == pytest.approx(1.0) and g(100) == pytest.approx(0.1)
    assert lr_lambda(10, 0.0, "linear")(5) == pytest.approx(0.5)
    assert lr_lambda(10, 0.5, "constant")(9) == 1.0
    with pytest.raises(ConfigError, match="optim.schedule: unknown schedule 'cosin'"):
        lr_lambda(10, 0.0, "cosin")
