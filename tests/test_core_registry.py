import importlib
import sys
import types
import warnings

import pytest

from regionvlm import registry as reg
from regionvlm.contracts import (
    CONTRACTS,
    LLM,
    MODEL_COMPONENTS,
    RUNTIME_KEYS,
    Projector,
    VisionEncoder,
    contract_violation,
)
from regionvlm.errors import ConfigError, PluginError, RegistryError, UserError
from regionvlm.registry import Registry, construct


@pytest.fixture
def projectors():
    r = Registry("projector")

    @r.register("mlp")
    class MLP:
        """Multi-layer perceptron."""

        def __init__(self, in_channels, depth=2, hidden_size=None):
            self.args = (in_channels, depth, hidden_size)

    @r.register("linear")
    def linear(in_channels, bias=True):
        """Linear map."""
        return ("linear", in_channels, bias)

    return r


def test_build_hit_with_runtime(projectors):
    obj = projectors.build({"type": "mlp", "depth": 3}, key_path="model.projector", in_channels=8)
    assert obj.args == (8, 3, None)
    assert projectors.build("linear", in_channels=4) == ("linear", 4, True)


def test_runtime_not_passed_where_not_accepted(projectors):
    # `out_channels` is offered by code but mlp does not take it: silently not passed.
    assert projectors.build({"type": "mlp"}, in_channels=1, out_channels=2).args == (1, 2, None)


def test_miss_names_registry_lists_known_and_suggests(projectors):
    with pytest.raises(RegistryError) as e:
        projectors.build({"type": "mpl"}, key_path="model.projector")
    msg = str(e.value)
    assert msg == ("model.projector.type: no projector named 'mpl'; did you mean 'mlp'? known: linear, mlp")


def test_miss_without_close_match(projectors):
    with pytest.raises(RegistryError, match=r"no projector named 'zzz' known: linear, mlp"):
        projectors.get("zzz")


def test_unexpected_key_names_path_and_known_keys(projectors):
    with pytest.raises(RegistryError) as e:
        projectors.build({"type": "mlp", "depht": 3}, key_path="model.projector", in_channels=1)
    assert str(e.value) == (
        "model.projector.depht: unexpected key for projector 'mlp'; did you mean 'depth'? known: depth, hidden_size"
    )


def test_user_may_not_set_runtime_keys(projectors):
    with pytest.raises(RegistryError, match=r"model.projector.in_channels: is set by the code"):
        projectors.build({"type": "mlp", "in_channels": 3}, key_path="model.projector", in_channels=1)


def test_missing_required_key(projectors):
    with pytest.raises(RegistryError, match=r"model.projector.in_channels: required key missing for projector 'mlp'"):
        projectors.build({"type": "mlp"}, key_path="model.projector")


def test_duplicate_registration_names_first_place(projectors):
    with pytest.raises(RegistryError, match=r"projector 'mlp' is already registered \(first at .*test_core_registry.py"):
        @projectors.register("mlp")
        class Other:  # noqa: F841
            pass


def test_node_without_type(projectors):
    with pytest.raises(RegistryError, match=r"model.projector: expected a mapping with a 'type' key"):
        projectors.build({"depth": 2}, key_path="model.projector")


def test_construct_validates_plain_callables():
    def f(a, b=1):
        return a + b

    assert construct(f, {"a": 1, "b": 2}) == 3
    with pytest.raises(RegistryError, match=r"data.c: unexpected key for f known: a, b"):
        construct(f, {"a": 1, "c": 2}, key_path="data")


def test_builtin_modules_import_lazily_on_first_lookup(monkeypatch):
    mod = types.ModuleType("fake_plugins_mod")
    r = Registry("thing", ("fake_plugins_mod",))
    mod.loaded = False

    def exec_register():
        r.register("a")(lambda: 1)

    monkeypatch.setitem(sys.modules, "fake_plugins_mod", mod)
    # Simulate a module that registers at import time by registering when first imported.
    monkeypatch.setattr(reg.importlib, "import_module", lambda name: exec_register() or mod)
    monkeypatch.setattr(reg, "_entry_points_loaded", True)
    assert r._items == {}
    assert r.names() == ["a"]


def test_entry_point_plugins_are_loaded(monkeypatch):
    import importlib.metadata as md

    r = Registry("widget")
    loaded = []

    class FakeEP:
        name, value = "myplugin", "myplugin.components"

        def load(self):
            loaded.append(self.name)
            r.register("from_ep")(lambda: 1)

    monkeypatch.setattr(md, "entry_points", lambda group: [FakeEP()] if group == reg.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(reg, "_entry_points_loaded", False)
    assert "from_ep" in r.names()
    assert loaded == ["myplugin"]


def test_broken_entry_point_is_isolated_and_named(monkeypatch):
    """One broken plugin: a warning naming it, the working plugin still registers, and a missed lookup names it."""
    import importlib.metadata as md

    r = Registry("widget")

    class BadEP:
        name, value = "broken", "broken.mod"

        def load(self):
            raise ImportError("no module named broken")

    class GoodEP:
        name, value = "good", "good.mod"

        def load(self):
            r.register("from_good")(lambda: 1)

    monkeypatch.setattr(md, "entry_points", lambda group: [BadEP(), GoodEP()])
    monkeypatch.setattr(reg, "_entry_points_loaded", False)
    monkeypatch.setattr(reg, "_plugin_failures", [])
    with pytest.warns(RuntimeWarning, match=r"plugin entry point 'broken' \(broken.mod\) failed to import: "
                                            r"ImportError: no module named broken"):
        assert r.names() == ["from_good"]
    with pytest.raises(RegistryError) as e:
        r.get("zzz", key_path="model.widget.type")
    assert str(e.value) == ("model.widget.type: no widget named 'zzz' known: from_good; note: plugin entry "
                            "point 'broken' (broken.mod) failed to import: ImportError: no module named broken")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not at every lookup
        assert Registry("other").names() == []


def test_failed_builtin_import_is_raised_again_not_an_empty_registry(tmp_path, monkeypatch):
    """A built-in module that fails to import leaves the registry unloaded: the next lookup raises again, and
    once the module imports, its components (some of them registered by the failed attempt) are there."""
    mod = tmp_path / "flaky_builtin_mod.py"
    mod.write_text("from tests_registry_target import R\n"
                   "@R.register('ok')\nclass Ok:\n    pass\n"
                   "assert R.names() == ['ok']\n"  # a lookup while the module is being imported
                   "raise RuntimeError('half-written plugin module')\n")
    target = types.ModuleType("tests_registry_target")
    target.R = Registry("thing", ("flaky_builtin_mod",))
    monkeypatch.setitem(sys.modules, "tests_registry_target", target)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(reg, "_entry_points_loaded", True)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="half-written plugin module"):
            target.R.names()
    mod.write_text("from tests_registry_target import R\n@R.register('ok')\nclass Ok:\n    pass\n")
    sys.modules.pop("flaky_builtin_mod", None)
    importlib.invalidate_caches()
    assert target.R.names() == ["ok"]  # re-registering the same definition is not a duplicate


def test_constructor_bug_is_a_plugin_error_naming_the_component(projectors):
    @projectors.register("buggy")
    class Buggy:
        def __init__(self, in_channels):
            raise ValueError("shapes do not match")

    with pytest.raises(PluginError) as e:
        projectors.build({"type": "buggy"}, key_path="model.projector", in_channels=2)
    assert not isinstance(e.value, UserError)
    assert str(e.value) == ("internal error in projector 'buggy' "
                            "(test_core_registry:test_constructor_bug_is_a_plugin_error_naming_the_component.<locals>"
                            ".Buggy), built at model.projector: ValueError: shapes do not match")
    with pytest.raises(RegistryError, match="model.projector.depht: unexpected key"):  # config mistakes stay user errors
        projectors.build({"type": "buggy", "depht": 1}, key_path="model.projector", in_channels=2)


def test_user_errors_raised_by_a_constructor_pass_through(projectors):
    @projectors.register("strict")
    def strict(in_channels):
        raise ConfigError("model.projector.depth: must be >= 1")

    with pytest.raises(ConfigError, match=r"^model.projector.depth: must be >= 1$"):
        projectors.build({"type": "strict"}, key_path="model.projector", in_channels=2)


def test_contract_checked_when_built():
    r = Registry("projector", contract=Projector)

    @r.register("good")
    class Good:
        def __init__(self, in_channels, out_channels):
            self.out_channels = out_channels

    @r.register("forgetful")
    class Forgetful:
        def __init__(self, in_channels, out_channels):
            pass

    @r.register("stringly")
    class Stringly:
        def __init__(self, in_channels, out_channels):
            self.out_channels = str(out_channels)

    assert r.build({"type": "good"}, in_channels=2, out_channels=4).out_channels == 4
    with pytest.raises(PluginError) as e:
        r.build({"type": "forgetful"}, key_path="model.projector", in_channels=2, out_channels=4)
    assert str(e.value) == ("model.projector: projector 'forgetful' (test_core_registry:test_contract_checked_when_built"
                            ".<locals>.Forgetful) breaks the projector contract (regionvlm.contracts.Projector): "
                            "attribute 'out_channels' is missing (expected int)")
    with pytest.raises(PluginError, match=r"attribute 'out_channels' is '4' \(expected int\)"):
        r.build({"type": "stringly"}, key_path="model.projector", in_channels=2, out_channels=4)


def test_contract_types():
    class Enc:
        out_channels, image_size, grid_size = 8, 32, (2, 2)
        image_mean, image_std = (0.5, 0.5, 0.5), [0.2, 0.2, 0.2]

    assert contract_violation(Enc(), VisionEncoder) is None
    Enc.grid_size = (2, 2, 2)
    assert contract_violation(Enc(), VisionEncoder) == "attribute 'grid_size' is (2, 2, 2) (expected tuple[int, int])"
    Enc.grid_size, Enc.image_size = (2, 2), True
    assert contract_violation(Enc(), VisionEncoder) == "attribute 'image_size' is True (expected int)"

    class Lm:
        hidden_size = 16
        get_input_embeddings = None

        def generate(self):
            pass

    assert contract_violation(Lm(), LLM) == "attribute 'get_input_embeddings' is None (expected a method)"


def test_builtin_components_meet_their_contracts():
    """Every built-in model component registry checks its kind's contract; the table of model keys agrees."""
    for key, kind in MODEL_COMPONENTS.items():
        assert reg.registry_for(kind).contract is CONTRACTS[kind], key
    assert set(RUNTIME_KEYS) == set(CONTRACTS)


def test_imports_list_registers_components(tmp_path, monkeypatch):
    (tmp_path / "my_ext_plugin.py").write_text(
        "from regionvlm.registry import HEADS\n"
        "@HEADS.register('my_test_head')\n"
        "class H:\n    '''A test head.'''\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg.import_modules(["my_ext_plugin"])
    assert "my_test_head" in reg.HEADS._items
    del reg.HEADS._items["my_test_head"]
    with pytest.raises(UserError, match=r"imports\[0\]: cannot import module 'no_such_mod_xyz'"):
        reg.import_modules(["no_such_mod_xyz"])


def test_kwargs_forwarded_to_base_are_checked_by_name():
    r = Registry("dataset")

    class Base:
        def __init__(self, image_root=None, seed=0):
            pass

    @r.register("child")
    class Child(Base):
        def __init__(self, ann_file, **kw):
            super().__init__(**kw)

    r.build({"type": "child", "ann_file": "a", "seed": 1})
    with pytest.raises(RegistryError, match=r"data.train\[0\].sed: unexpected key for dataset 'child'; did you mean 'seed'\?"):
        r.build({"type": "child", "ann_file": "a", "sed": 1}, key_path="data.train[0]")


def test_nested_plugin_error_is_not_wrapped_again():
    """A dataset building its prompt: the prompt's bug is reported as the prompt's, not re-wrapped as the dataset's."""
    prompts, datasets = Registry("prompt"), Registry("dataset")

    @prompts.register("bad_prompt")
    def bad_prompt():
        raise KeyError("template")

    @datasets.register("uses_prompt")
    def uses_prompt():
        return prompts.build({"type": "bad_prompt"}, key_path="prompt")

    with pytest.raises(PluginError) as e:
        datasets.build({"type": "uses_prompt"}, key_path="data.train[0]")
    assert str(e.value).startswith("internal error in prompt 'bad_prompt' (test_core_registry:")
    assert "dataset" not in str(e.value)
