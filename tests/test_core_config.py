import textwrap

import pytest

from regionvlm.config import load_config, parse_overrides, save_config
from regionvlm.errors import ConfigError


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def cfgs(tmp_path):
    write(tmp_path / "base.yaml", """
        imports: [a, b]
        model:
          projector: {type: mlp, depth: 2}
          llm: {type: hf_causal_lm, pretrained: base-llm}
        optim: {lr: 1.0e-3, warmup_ratio: 0.05}
    """)
    write(tmp_path / "mid.yaml", """
        _base_: base.yaml
        model:
          projector: {depth: 3}
        optim: {lr: 5.0e-4}
    """)
    sub = tmp_path / "sub"
    sub.mkdir()
    write(sub / "stage.yaml", """
        _base_: ../mid.yaml
        optim: {lr: 2.0e-5}
        imports: [c]
        output: {root: "{{fileDirname}}/out", name: "${model.llm.pretrained}-run"}
    """)
    return tmp_path


def test_precedence_defaults_base_file_cli(cfgs):
    cfg = load_config(cfgs / "sub" / "stage.yaml", ["optim.warmup_ratio=0.1", "model.projector.hidden_size=7"])
    assert cfg.optim.lr == 2.0e-5                      # file beats bases
    assert cfg.model.projector.depth == 3              # nearer base beats farther base
    assert cfg.model.projector.type == "mlp"           # deep merge keeps untouched keys
    assert cfg.optim.warmup_ratio == 0.1               # CLI beats everything
    assert cfg.model.projector.hidden_size == 7
    assert cfg.optim.weight_decay == 0.0               # schema default
    assert list(cfg.imports) == ["c"]                  # lists are replaced, not concatenated


def test_file_dirname_and_interpolation(cfgs):
    cfg = load_config(cfgs / "sub" / "stage.yaml")
    assert cfg.output.root == str((cfgs / "sub").resolve()) + "/out"
    assert cfg.output.name == "base-llm-run"


def test_env_interpolation(cfgs, monkeypatch):
    write(cfgs / "env.yaml", "data: {root: '${oc.env:RV_TEST_DATA,fallback}'}\n")
    assert load_config(cfgs / "env.yaml").data.root == "fallback"
    monkeypatch.setenv("RV_TEST_DATA", "/data/x")
    assert load_config(cfgs / "env.yaml").data.root == "/data/x"


def test_base_list_order(cfgs):
    write(cfgs / "a.yaml", "optim: {lr: 1.0, min_lr_ratio: 1.0}\n")
    write(cfgs / "b.yaml", "optim: {lr: 2.0}\n")
    write(cfgs / "ab.yaml", "_base_: [a.yaml, b.yaml]\n")
    cfg = load_config(cfgs / "ab.yaml")
    assert (cfg.optim.lr, cfg.optim.min_lr_ratio) == (2.0, 1.0)


def test_cycle_detected(cfgs):
    write(cfgs / "x.yaml", "_base_: y.yaml\n")
    write(cfgs / "y.yaml", "_base_: x.yaml\n")
    with pytest.raises(ConfigError, match=r"_base_ cycle: .*x.yaml -> .*y.yaml -> .*x.yaml"):
        load_config(cfgs / "x.yaml")


def test_missing_base(cfgs):
    write(cfgs / "m.yaml", "_base_: nope.yaml\n")
    with pytest.raises(ConfigError, match=r"m.yaml: _base_: no such file 'nope.yaml'"):
        load_config(cfgs / "m.yaml")


def test_unknown_key_names_file_and_path(cfgs):
    write(cfgs / "bad.yaml", "_base_: base.yaml\noptim: {lrr: 1}\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfgs / "bad.yaml")
    assert "bad.yaml optim.lrr: unknown key; did you mean 'lr'?" in str(e.value)


def test_unknown_top_level_key_from_override(cfgs):
    with pytest.raises(ConfigError, match=r"^\(override\) trainr: unknown key; did you mean 'trainer'\?"):
        load_config(cfgs / "base.yaml", ["trainr.max_steps=1"])


@pytest.mark.parametrize("section", ["predict", "datagen"])
def test_sections_without_a_feature_are_unknown(cfgs, section):
    """Only sections something reads exist (the predict command takes flags; there is no datagen command yet)."""
    write(cfgs / "extra.yaml", f"{section}: {{batch_size: 2}}\n")
    with pytest.raises(ConfigError, match=rf"extra.yaml {section}: unknown key(; did you mean 'data'\?)? known: imports, "
                                          r"seed, model, data, trainer, optim, generation, eval, loggers, output$"):
        load_config(cfgs / "extra.yaml")


def test_mistyped_value(cfgs):
    with pytest.raises(ConfigError, match=r"\(override\) optim.lr: .*could not be converted to Float"):
        load_config(cfgs / "base.yaml", ["optim.lr=fast"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match=r"override 'trainer.max_steps': expected key=value"):
        parse_overrides(["trainer.max_steps"])


def test_override_values_parse_as_yaml():
    assert parse_overrides(["a.b=3", "c=[x,y]", "d=true", "e=1e-4", "f="]) == [
        ("a.b", 3), ("c", ["x", "y"]), ("d", True), ("e", 1e-4), ("f", None)]


def test_override_indexes_lists_and_merges_mappings(cfgs):
    write(cfgs / "lists.yaml", "data: {train: [{type: a, ratio: 1}, {type: b}]}\n")
    cfg = load_config(cfgs / "lists.yaml", ["data.train.1.ratio=2", "data.train.0.extra={x: 1}"])
    assert cfg.data.train[1].ratio == 2 and cfg.data.train[0].type == "a" and cfg.data.train[0].extra.x == 1
    with pytest.raises(ConfigError, match=r"\(override\) data.train.5"):
        load_config(cfgs / "lists.yaml", ["data.train.5.ratio=2"])


def test_unresolvable_interpolation(cfgs):
    with pytest.raises(ConfigError, match=r"model.x: .*nope"):
        load_config(cfgs / "base.yaml", ["model.x=${nope}"])


def test_invalid_yaml_names_line(cfgs):
    write(cfgs / "broken.yaml", "model:\n  a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: line \d+ invalid YAML"):
        load_config(cfgs / "broken.yaml")


def test_saved_config_is_resolved_and_reloadable(cfgs, tmp_path):
    cfg = load_config(cfgs / "sub" / "stage.yaml")
    out = tmp_path / "run" / "config.yaml"
    save_config(cfg, out)
    again = load_config(out)
    assert again.output.name == "base-llm-run" and "${" not in out.read_text()
    assert [p.name for p in out.parent.iterdir()] == ["config.yaml"]  # no temp file left behind


def test_diamond_base_applied_once_at_first_position(cfgs):
    write(cfgs / "root.yaml", "optim: {lr: 1.0, min_lr_ratio: 1.0}\n")
    write(cfgs / "stage.yaml", "_base_: root.yaml\noptim: {lr: 2.0}\n")
    write(cfgs / "small.yaml", "_base_: root.yaml\noptim: {min_lr_ratio: 3.0}\n")
    write(cfgs / "small_stage.yaml", "_base_: [stage.yaml, small.yaml]\n")
    cfg = load_config(cfgs / "small_stage.yaml")
    # root.yaml must not be re-applied after stage.yaml (which would reset lr to 1.0)
    assert (cfg.optim.lr, cfg.optim.min_lr_ratio) == (2.0, 3.0)


def test_override_deletes_a_key_to_replace_a_node(cfgs):
    cfg = load_config(cfgs / "base.yaml", ["~model.projector.depth", "model.projector.type=linear"])
    assert dict(cfg.model.projector) == {"type": "linear"}
    with pytest.raises(ConfigError, match=r"\(override\) ~model.projector.nope: no such key to delete"):
        load_config(cfgs / "base.yaml", ["~model.projector.nope"])
