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
    assert state == {"vision_encoder": 0, "projector": 28, "llm": 0}  # trainable parameters per component
    assert all(p.requires_grad for p in m.projector.parameters())
    assert not any(p.requires_grad for p in m.llm.parameters())


def test_training_puts_trainable_components_in_train_mode_and_frozen_ones_in_eval_mode():
    """A pretrained HF model arrives in eval mode and Lightning keeps modes: the module's on_fit_start sets them."""
    from regionvlm.engine.module import RegionVLMModule, set_train_modes

    m = Toy().eval()                      # as from_pretrained leaves it
    m.projector.train()
    # part of a component trains (the llm's weight, not its bias): the whole component goes to train mode
    module = RegionVLMModule({"model": {"trainable": ["vision_encoder", "llm.weight"]}}, model=m, tokenizer=None)
    module.on_fit_start()
    assert (m.vision_encoder.training, m.llm.training, m.projector.training) == (True, True, False)
    assert not m.projector[1].training    # the whole frozen component, its submodules too
    assert not m.llm.bias.requires_grad and set_train_modes(m) == {"vision_encoder": True, "projector": False, "llm": True}


def test_freeze_list_and_unknown_names():
    m = Toy()
    assert apply_trainable(m, freeze=["vision_encoder"]) == {"vision_encoder": 0, "projector": 28, "llm": 10}
    with pytest.raises(ConfigError, match=r"model.trainable\[1\]: 'projecter' matches no parameter .*components: "
                                          r"vision_encoder, projector, llm"):
        apply_trainable(m, trainable=["llm", "projecter"])
    with pytest.raises(ConfigError, match=r"model.freeze\[0\]: 'llm\.\*\.lora_\*' matches no parameter"):
        apply_trainable(m, freeze=["llm.*.lora_*"])
    with pytest.raises(ConfigError, match="either 'trainable' or 'freeze'"):
        apply_trainable(m, trainable=["llm"], freeze=["projector"])


def test_a_component_without_parameters_may_be_listed():
    m = Toy()
    m.region_extractor = nn.Identity()  # RGPT's mask pooling: a component with no parameters
    assert apply_trainable(m, trainable=["region_extractor", "projector"])["projector"] == 28


def test_frozen_unchanged_trainable_changed_after_a_step():
    torch.manual_seed(0)
    m = Toy()
    apply_trainable(m, trainable=["projector", "llm"])
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = build_optimizer(m, OmegaConf.structured(OptimConfig(lr=0.1, warmup_ratio=0.0)), total_steps=10)["optimizer"]
    assert type(opt) is torch.optim.AdamW  # the default optimizer node
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
    with pytest.raises(ConfigError, match=r"optim.lr_multipliers.lm: 'lm' matches no parameter"):
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


class Stack(nn.Module):
    """Parameter names like a real model's: llm.model.layers.N.{q_proj,lora_A}, vision_encoder.model.layers.N."""

    def __init__(self):
        super().__init__()
        self.vision_encoder = nn.Module()
        self.vision_encoder.model = nn.Module()
        self.vision_encoder.model.layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(24))
        self.llm = nn.Module()
        self.llm.model = nn.Module()
        self.llm.model.layers = nn.ModuleList(nn.ModuleDict({"q_proj": nn.Linear(2, 2, bias=False),
                                                             "lora_A": nn.Linear(2, 1, bias=False)})
                                              for _ in range(2))
        self.projector = nn.Linear(2, 2)


def _trains(m):
    return sorted(n for n, p in m.named_parameters() if p.requires_grad)


def test_trainable_glob_patterns_select_parameters():
    m = Stack()
    apply_trainable(m, trainable=["llm.*.lora_*", "vision_encoder.*.layers.2[0-3].*", "projector"])
    assert _trains(m) == ["llm.model.layers.0.lora_A.weight", "llm.model.layers.1.lora_A.weight",
                          "projector.bias", "projector.weight",
                          *[f"vision_encoder.model.layers.{i}.{w}" for i in (20, 21, 22, 23) for w in ("bias", "weight")]]
    # a pattern naming a module selects everything below it; freeze is the complement
    apply_trainable(m, freeze=["vision_encoder", "llm.model.layers.1"])
    assert _trains(m) == ["llm.model.layers.0.lora_A.weight", "llm.model.layers.0.q_proj.weight",
                          "projector.bias", "projector.weight"]
    with pytest.raises(ConfigError, match=r"model.trainable\[0\]: 'vision_encoder.model.layers.24' matches no "):
        apply_trainable(m, trainable=["vision_encoder.model.layers.24"])


def test_lr_multipliers_by_pattern_most_specific_wins():
    m = Stack()
    apply_trainable(m, trainable=["llm", "projector"])
    groups = parameter_groups(m, lr=1.0, weight_decay=0.1, lr_multipliers={"llm": 0.1, "llm.*.lora_*": 2.0})
    lora = next(g for g in groups if g["name"] == "llm[llm.*.lora_*]")
    assert {id(p) for p in lora["params"]} == {id(layer["lora_A"].weight) for layer in m.llm.model.layers}
    assert sorted((g["name"], g["lr"], g["weight_decay"], len(g["params"])) for g in groups) == [
        ("llm", 0.1, 0.1, 2), ("llm[llm.*.lora_*]", 2.0, 0.1, 2), ("projector", 1.0, 0.0, 1),
        ("projector", 1.0, 0.1, 1)]


def _cfg(**kw):
    return OmegaConf.structured(OptimConfig(warmup_ratio=0.0, **kw))


def test_optimizer_node_by_name_with_its_options():
    m = Toy()
    opt = build_optimizer(m, _cfg(lr=0.5, optimizer={"type": "sgd", "momentum": 0.9}), total_steps=10)["optimizer"]
    assert type(opt) is torch.optim.SGD
    assert {g["momentum"] for g in opt.param_groups} == {0.9} and {g["lr"] for g in opt.param_groups} == {0.5}
    opt = build_optimizer(m, _cfg(optimizer={"type": "adamw", "betas": [0.9, 0.95]}), total_steps=10)["optimizer"]
    assert {tuple(g["betas"]) for g in opt.param_groups} == {(0.9, 0.95)}


def test_optimizer_node_errors_name_the_key():
    m = Toy()
    with pytest.raises(ConfigError, match=r"optim.optimizer.type: no optimizer named 'adamx'; did you mean .*"
                                          r"known: adagrad, adam, adamw, nadam"):
        build_optimizer(m, _cfg(optimizer={"type": "adamx"}), total_steps=10)
    with pytest.raises(ConfigError, match=r"optim.optimizer.betass: unexpected key for optimizer 'adamw'; "
                                          r"did you mean 'betas'"):
        build_optimizer(m, _cfg(optimizer={"type": "adamw", "betass": [0.9, 0.9]}), total_steps=10)
    with pytest.raises(ConfigError, match=r"optim.optimizer.lr: set optim.lr instead"):
        build_optimizer(m, _cfg(optimizer={"type": "sgd", "lr": 0.1}), total_steps=10)


def test_custom_optimizer_registers_by_name():
    from regionvlm.registry import OPTIMIZERS

    class Halving(torch.optim.SGD):
        """SGD with a fixed half learning rate (a stand-in for a user's optimizer)."""

        def __init__(self, params, lr):
            super().__init__(params, lr=lr / 2)

    OPTIMIZERS.register("test_halving")(Halving)
    try:
        opt = build_optimizer(Toy(), _cfg(lr=0.2, optimizer={"type": "test_halving"}), total_steps=10)["optimizer"]
        assert type(opt) is Halving and opt.defaults["lr"] == pytest.approx(0.1)
    finally:
        OPTIMIZERS._items.pop("test_halving")
