"""What `pip install regionvlm` ships: every package, the benchmarks under the regionvlm namespace, the recipes
and the tiny tokenizer as package data; and recipes named without a path."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from regionvlm.cli import main
from regionvlm.config import load_config, recipe_names, recipes_root, resolve_config_path
from regionvlm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
RECIPE_FILES = {"rgpt/README.md", "rgpt/base.yaml", "rgpt/eval.yaml", "rgpt/stage1.yaml", "rgpt/stage2.yaml",
                "rgpt/tiny/base.yaml", "rgpt/tiny/eval.yaml", "rgpt/tiny/stage1.yaml", "rgpt/tiny/stage2.yaml",
                "rgpt/datagen_v3det.yaml", "rgpt/tiny/datagen.yaml", "rgpt/tiny/datagen_train.yaml",
                "rgpt/tiny/ablations.yaml", "rgpt/tiny/eval_scope.yaml", "rgpt/small/train.yaml", "rgpt/small/eval.yaml",
                "rgpt/small/train_cls_only.yaml", "rgpt/small/scope.yaml",
                "rgpt/tiny/tokenizer/tokenizer.json", "rgpt/tiny/tokenizer/tokenizer_config.json",
                *(f"rgpt/scale/{n}.yaml" for n in ("stage1_1gpu", "stage2_lora_1gpu", "stage2_fsdp_8gpu",
                                                    "stage2_zero3_8gpu", "stage2_multinode"))}


def _setuptools_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_directory_is_listed():
    """The explicit package list misses nothing: each folder with an __init__.py (or, under projects/, with
    recipe files) maps to a listed package, through pyproject's package-dir mapping."""
    cfg = _setuptools_config()
    listed = set(cfg["packages"])
    mapping = {name: ROOT / folder for name, folder in cfg["package-dir"].items()} | {"regionvlm": ROOT / "regionvlm"}
    assert mapping["regionvlm.benchmarks"] == ROOT / "benchmarks" and mapping["regionvlm.recipes"] == ROOT / "projects"
    found = set()
    for name, top in mapping.items():
        for folder in [top, *(p for p in top.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
            is_package = (folder / "__init__.py").exists()
            holds_recipes = name == "regionvlm.recipes" and any(p.is_file() for p in folder.iterdir())
            if is_package or holds_recipes:
                found.add(".".join([name, *folder.relative_to(top).parts]))
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - found == set(), "listed packages without a folder"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, text=True)
    (path,) = out.glob("regionvlm-*.whl")
    return path


def test_wheel_ships_benchmarks_recipes_and_tokenizer(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    top_level = {n.split("/")[0] for n in names}
    assert top_level == {"regionvlm", next(n for n in top_level if n.endswith(".dist-info"))}  # no benchmarks/, projects/
    benchmark_sources = {p.name for p in (ROOT / "benchmarks").glob("*.py")} | {
        p.name for p in (ROOT / "benchmarks").glob("*.yaml")}
    assert {n.removeprefix("regionvlm/benchmarks/") for n in names if n.startswith("regionvlm/benchmarks/")} \
        == benchmark_sources
    assert "pope.yaml" in benchmark_sources and "pope.py" in benchmark_sources
    shipped = {n.removeprefix("regionvlm/recipes/") for n in names if n.startswith("regionvlm/recipes/")}
    assert shipped == RECIPE_FILES | {"__init__.py"}
    assert "regionvlm/contracts.py" in names


def test_installed_recipe_resolves_bases_and_file_dirname(wheel, tmp_path, monkeypatch):
    """From where the wheel puts them (no repository around): relative _base_ and {{fileDirname}} work."""
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    monkeypatch.chdir(tmp_path)
    recipes = tmp_path / "site" / "regionvlm" / "recipes"
    cfg = load_config(recipes / "rgpt" / "tiny" / "stage2.yaml")
    assert cfg.trainer.max_steps == 400 and cfg.optim.lr == 1.0e-3  # tiny/stage2 itself
    assert cfg.model.llm.pretrained is None and cfg.data.max_length == 256  # tiny/base over ../stage2 over ../base
    assert cfg.model.init_from == "runs/rgpt-tiny-stage1/export"
    tokenizer = Path(cfg.model.llm.tokenizer)
    assert tokenizer == (recipes / "rgpt" / "tiny" / "tokenizer").resolve() and (tokenizer / "tokenizer.json").is_file()


def test_recipe_named_without_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no file named rgpt/tiny/stage2 here
    assert recipes_root() == ROOT / "projects"  # the editable install maps the repository's folder
    assert resolve_config_path("rgpt/tiny/stage2") == ROOT / "projects/rgpt/tiny/stage2.yaml"
    assert resolve_config_path("rgpt/tiny/stage2.yaml") == ROOT / "projects/rgpt/tiny/stage2.yaml"
    assert main(["config", "rgpt/tiny/stage2"]) == 0
    out = capsys.readouterr().out
    assert "name: rgpt-tiny-stage2" in out and f"tokenizer: {ROOT / 'projects/rgpt/tiny/tokenizer'}" in out

    (tmp_path / "rgpt" / "tiny").mkdir(parents=True)  # a file of that name wins over the recipe
    (tmp_path / "rgpt" / "tiny" / "stage2").write_text("seed: 5\n")
    assert load_config("rgpt/tiny/stage2").seed == 5


def test_unknown_recipe_is_one_line_with_close_names(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        resolve_config_path("rgpt/tiny/stage3")
    assert str(e.value) == ("rgpt/tiny/stage3: no such config file or installed recipe; did you mean "
                            "'rgpt/tiny/stage2' or 'rgpt/tiny/stage1' or 'rgpt/tiny/datagen'? installed recipes: "
                            + ", ".join(recipe_names()))
    assert main(["train", "rgpt/tiny/stage3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: rgpt/tiny/stage3: no such config file") and len(err.splitlines()) == 1


def test_list_recipes(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["list", "recipes"]) == 0
    out = capsys.readouterr().out
    assert recipe_names() == sorted(n.removesuffix(".yaml") for n in RECIPE_FILES if n.endswith(".yaml"))
    for name in recipe_names():
        assert name in out
    assert "Tiny stage 2: from tiny stage 1's export" in out
