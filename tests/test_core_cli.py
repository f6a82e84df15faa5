import json
import os
import subprocess
import sys

from regionvlm.cli import COMMANDS, main


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "regionvlm.cli", *args], capture_output=True, text=True)


def test_import_is_light():
    code = ("import sys, regionvlm, regionvlm.cli, regionvlm.registry, regionvlm.config; "
            "import json; print(json.dumps([m for m in ('torch', 'lightning', 'transformers', 'omegaconf') "
            "if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_help_does_not_import_heavy_packages():
    code = ("import sys\nfrom regionvlm.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', [m for m in ('torch', 'lightning', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout and "train" in out.stdout


def test_every_command_has_a_parser():
    from regionvlm.cli import command_parser

    for name in COMMANDS:
        parser, module = command_parser(name)
        assert parser.prog == f"regionvlm {name}" and callable(module.run)


def test_exit_codes(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lrr: 1}\n")
    assert main(["config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "optim.lrr: unknown key" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1

    good = tmp_path / "good.yaml"
    good.write_text("optim: {lr: 0.5}\n")
    assert main(["config", str(good), "seed=3"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.5" in out and "seed: 3" in out

    assert main(["config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: no such config file or installed recipe" in capsys.readouterr().err
    assert main(["list", "projectr"]) == 2
    assert "did you mean 'projector'?" in capsys.readouterr().err


def test_unknown_command_and_argument_exit_2():
    assert run_cli("nope").returncode == 2
    assert run_cli("config").returncode == 2  # missing required argument


def test_internal_error_exit_1(monkeypatch, capsys):
    import regionvlm.commands.config_cmd as cmd

    monkeypatch.setattr(cmd, "run", lambda args: 1 / 0)
    assert main(["config", "x.yaml"]) == 1
    assert "internal error: ZeroDivisionError" in capsys.readouterr().err


def test_plugin_error_exit_1_names_the_plugin(monkeypatch, capsys):
    import regionvlm.commands.config_cmd as cmd
    from regionvlm.errors import PluginError

    def run(args):
        raise PluginError("internal error in projector 'foo' (my_pkg.components:Foo), built at model.projector: "
                          "ValueError: boom")

    monkeypatch.setattr(cmd, "run", run)
    assert main(["config", "x.yaml"]) == 1
    assert capsys.readouterr().err == ("internal error in projector 'foo' (my_pkg.components:Foo), built at "
                                       "model.projector: ValueError: boom (rerun with --debug for the traceback)\n")


def test_list_shows_docs_verbatim(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["list", "prompt"]) == 0
    out = capsys.readouterr().out
    assert "region_classification" in out and 'answer "Region [k]."' in out  # brackets are not rich markup


def test_plugin_constructor_bug_through_train_is_internal_error(tmp_path, capsys):
    """A projector whose constructor crashes: exit 1 naming it and its module; a misspelt key of the same
    projector stays the user's error: exit 2, before anything is built."""
    from pathlib import Path

    tiny_base = Path(__file__).resolve().parents[1] / "projects" / "rgpt" / "tiny" / "base.yaml"
    (tmp_path / "buggy_projector_plugin.py").write_text(
        "from regionvlm.registry import PROJECTORS\n"
        "@PROJECTORS.register('buggy_test_projector')\n"
        "class Buggy:\n"
        "    def __init__(self, in_channels, out_channels, depth=2):\n"
        "        raise ValueError(f'cannot build {depth} layers')\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"_base_: {tiny_base}\nimports: [buggy_projector_plugin]\n"
                   "model: {projector: {type: buggy_test_projector}}\n"
                   f"data: {{train: [], val: []}}\noutput: {{root: {tmp_path / 'runs'}, name: t}}\n")
    try:
        assert main(["train", str(cfg), "model.projector.depht=3"]) == 2
        assert "model.projector.depht: unexpected key for projector 'buggy_test_projector'; did you mean 'depth'?" \
            in capsys.readouterr().err
        assert main(["train", str(cfg)]) == 1
        assert capsys.readouterr().err == (
            "internal error in projector 'buggy_test_projector' (buggy_projector_plugin:Buggy), built at "
            "model.projector: ValueError: cannot build 2 layers (rerun with --debug for the traceback)\n")
    finally:
        from regionvlm.registry import PROJECTORS

        PROJECTORS._items.pop("buggy_test_projector", None)
        sys.modules.pop("buggy_projector_plugin", None)


def test_output_cut_short_by_the_reader_is_not_an_error():
    """`regionvlm ablate SPEC --list | head -1`: the closed pipe ends the command quietly (was 'internal error')."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    spec = Path(__file__).resolve().parents[1] / "projects" / "rgpt" / "tiny" / "ablations.yaml"
    proc = subprocess.run(f"'{sys.executable}' -m regionvlm ablate '{spec}' --list --out /nonexistent | head -1",
                          shell=True, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.stdout == "0\ttiny\tseed=0\ttodo\n" and proc.stderr == ""


def test_commands_do_not_print_the_libraries_loading_bars(tmp_path):
    """transformers' 'Loading weights' bar and its deprecation notes were printed by every command that loads a
    pretrained folder; the CLI hides them unless --debug (or the user's own settings) asks."""
    from conftest import sentencepiece_llm_folder

    folder = sentencepiece_llm_folder(tmp_path / "llm")
    script = (f"from regionvlm.cli import quiet_libraries; quiet_libraries()\n"
              f"from regionvlm.plugins.llms import build_tokenizer\nfrom regionvlm.registry import LLMS\n"
              f"node = {{'type': 'hf_causal_lm', 'pretrained': {str(folder)!r}}}\n"
              f"LLMS.build(node, key_path='model.llm', vocab_size=len(build_tokenizer(node)))\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")}
    quiet = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    loud = subprocess.run([sys.executable, "-c", script.split("\n", 1)[1]], capture_output=True, text=True, env=env,
                          timeout=120)
    assert quiet.returncode == loud.returncode == 0, quiet.stderr[-1000:]
    assert "Loading weights" in loud.stderr and "Loading weights" not in quiet.stderr


def test_the_progress_bar_says_epoch_without_minus_two_or_v_num():
    from types import SimpleNamespace

    from regionvlm.engine.callbacks import progress_bar

    bar = progress_bar()
    bar._trainer = SimpleNamespace(max_epochs=-1, max_steps=200)
    assert bar._get_train_description(2).strip() == "Epoch 2"
    bar._trainer = SimpleNamespace(max_epochs=3, max_steps=-1)
    assert bar._get_train_description(1).strip() == "Epoch 1/2"


def test_list_a_component_shows_its_arguments(tmp_path, monkeypatch, capsys):
    assert main(["list", "hf_clip"]) == 0
    out = capsys.readouterr().out
    assert "regionvlm.plugins.vision:HFCLIPVisionEncoder" in out and "select_layer" in out and "-2" in out
    assert main(["list", "mask_pool"]) == 0
    out = capsys.readouterr().out
    assert "in_channels" in out and "(set by the code)" in out and "mask_resize" in out
    assert main(["list", "hf_clp"]) == 2
    assert "did you mean 'hf_clip'" in capsys.readouterr().err
    # --imports finds a module in the current folder, as the docs say
    (tmp_path / "my_parts.py").write_text(
        "import torch\nfrom regionvlm.registry import PROJECTORS\n\n"
        "@PROJECTORS.register('listed_here')\nclass Listed(torch.nn.Module):\n"
        "    '''A projector of my own.'''\n"
        "    def __init__(self, in_channels: int, out_channels: int, depth: int = 3):\n"
        "        super().__init__()\n        self.out_channels = out_channels\n")
    monkeypatch.chdir(tmp_path)
    assert main(["list", "projector", "--imports", "my_parts"]) == 0
    assert "listed_here" in capsys.readouterr().out
