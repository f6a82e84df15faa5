"""The ablation spec (format: `regionvlm.ablation`), its cells, and where each cell's run lives."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regionvlm.config import SEED_RANGE
from regionvlm.errors import ConfigError

SPEC_KEYS = ("train", "eval", "overrides", "eval_overrides", "seeds", "variants", "metrics", "splits", "output")
SPLIT_KEYS = ("patch_size", "image_size", "overlap")
MAX_CELLS = 10_000   # variants × seeds: a sweep larger than this is a mistake (or a YAML that expands), not a plan
#: keys `cell_overrides` sets for every cell (its seed, run folder, evaluation folder): a spec may not set them
PLACE_KEYS = ("seed", "output", "output.root", "output.name", "eval.out_dir")


@dataclass(frozen=True)
class Cell:
    index: int
    variant: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.variant}-seed{self.seed}"


@dataclass
class Spec:
    path: Path
    train: Path
    eval: Path
    overrides: list[str]
    eval_overrides: list[str]
    seeds: list[int]
    variants: dict[str, dict[str, Any]]   # name → {train: Path | None, overrides, eval_overrides}
    metrics: list[str] | None
    splits: dict[str, dict[str, float]]
    output: Path

    def cells(self) -> list[Cell]:
        pairs = [(v, s) for s in self.seeds for v in self.variants]  # seed-major: see the module doc
        return [Cell(i, v, s) for i, (v, s) in enumerate(pairs)]


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of key=value strings, got {value!r}")
    for item in value:
        key = item[1:] if item.startswith("~") and "=" not in item else item.partition("=")[0]
        if key in PLACE_KEYS or key.startswith("output."):
            if key == "seed":
                raise ConfigError(f"{where}: '{item}': the seed is set for each cell by ablate, from seeds:")
            raise ConfigError(f"{where}: '{item}': {key} is set for each cell by ablate (from the spec's output:, "
                              f"or --out), so that every cell's outputs stay in its own folder under the output root")
    return list(value)


def _config_path(spec_dir: Path, name: Any, where: str) -> Path:
    from regionvlm.config import resolve_config_path

    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: expected a config file or recipe name, got {name!r}")
    local = spec_dir / name
    try:
        return local if local.is_file() else resolve_config_path(name)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_spec(path: str | os.PathLike, output: str | None = None) -> Spec:
    """Read and check an ablation spec; errors name the file and the field."""
    from omegaconf import OmegaConf

    from regionvlm.config import load_yaml, resolve_config_path

    path = resolve_config_path(path)  # a file, or an installed recipe's name (rgpt/tiny/ablations)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the spec: {exc}") from exc
    data = load_yaml(text, str(path))  # strict: duplicate keys, alias bombs
    try:
        raw = OmegaConf.to_container(OmegaConf.create(data), resolve=True) if isinstance(data, dict) else data
    except Exception as exc:
        raise ConfigError(f"{path}: cannot read the spec: {str(exc).splitlines()[0]}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with train, eval, variants, seeds")
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{path} {unknown[0]}: unknown key; known: {', '.join(SPEC_KEYS)}")
    for key in ("train", "eval", "variants"):
        if key not in raw:
            raise ConfigError(f"{path} {key}: required")
    if not isinstance(raw["variants"], dict) or not raw["variants"]:
        raise ConfigError(f"{path} variants: expected a mapping of name → overrides, got {raw['variants']!r}")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path} seeds: expected a list of distinct integers, got {seeds!r:.200}")
    low, high = SEED_RANGE
    bad = [s for s in seeds if not low <= s <= high]
    if bad:
        raise ConfigError(f"{path} seeds: {bad[0]} is not a seed: expected whole numbers in {low}..{high} (what "
                          f"Lightning and numpy accept)")
    if len(raw["variants"]) * len(seeds) > MAX_CELLS:
        raise ConfigError(f"{path}: {len(raw['variants'])} variants × {len(seeds)} seeds = "
                          f"{len(raw['variants']) * len(seeds)} cells, more than {MAX_CELLS} "
                          f"(regionvlm.ablation.spec.MAX_CELLS); split the sweep into several specs")
    variants = {}
    for name, node in raw["variants"].items():
        where = f"{path} variants.{name}"
        if not str(name).replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{where}: a variant name is a folder name: letters, digits, '_' and '-' only")
        if isinstance(node, dict):
            extra = sorted(set(node) - {"train", "overrides", "eval_overrides"})
            if extra:
                raise ConfigError(f"{where}.{extra[0]}: unknown key; known: train, overrides, eval_overrides")
            # a variant's own training config: for what overrides cannot say (a list entry cannot be deleted)
            train = _config_path(path.parent, node["train"], f"{where}.train") if "train" in node else None
            variants[str(name)] = {"train": train,
                                   "overrides": _strings(node.get("overrides"), f"{where}.overrides"),
                                   "eval_overrides": _strings(node.get("eval_overrides"), f"{where}.eval_overrides")}
        else:
            variants[str(name)] = {"train": None, "overrides": _strings(node, where), "eval_overrides": []}
    metrics = raw.get("metrics")
    if metrics is not None and (not isinstance(metrics, list) or not all(isinstance(m, str) and "." in m
                                                                          for m in metrics)):
        raise ConfigError(f"{path} metrics: expected a list of 'benchmark.metric' names, got {metrics!r}")
    splits = raw.get("splits") or {}
    if not isinstance(splits, dict):
        raise ConfigError(f"{path} splits: expected {{benchmark: {{patch_size, image_size, overlap}}}}")
    for bench, node in splits.items():
        if not isinstance(node, dict) or set(node) != set(SPLIT_KEYS) \
                or not all(isinstance(v, (int, float)) and v > 0 for v in node.values()):
            raise ConfigError(f"{path} splits.{bench}: expected positive numbers for exactly "
                              f"{', '.join(SPLIT_KEYS)}, got {node!r}")
    if output is None:
        output = raw.get("output") or str(Path(os.environ.get("REGIONVLM_OUTPUT", "runs")) / "ablations" / path.stem)
    return Spec(path=path, train=_config_path(path.parent, raw["train"], f"{path} train"),
                eval=_config_path(path.parent, raw["eval"], f"{path} eval"),
                overrides=_strings(raw.get("overrides"), f"{path} overrides"),
                eval_overrides=_strings(raw.get("eval_overrides"), f"{path} eval_overrides"),
                seeds=seeds, variants=variants, metrics=metrics, splits=splits, output=Path(output))


def cell_dir(spec: Spec, cell: Cell) -> Path:
    return spec.output / "cells" / cell.name


def cell_finished(spec: Spec, cell: Cell) -> bool:
    """A cell's ``result.json`` is written last, atomically: there = finished, skipped on a rerun."""
    return (cell_dir(spec, cell) / "result.json").is_file()


def cell_train_config(spec: Spec, cell: Cell) -> Path:
    """The training config of a cell: its variant's own ``train`` if it names one, else the spec's."""
    return spec.variants[cell.variant]["train"] or spec.train


def cell_overrides(spec: Spec, cell: Cell) -> tuple[list[str], list[str]]:
    """The training and evaluation overrides of a cell: spec-wide, then the variant's, then seed and place."""
    variant = spec.variants[cell.variant]
    place = [f"seed={cell.seed}", f"output.root={spec.output / 'cells'}", f"output.name={cell.name}"]
    return ([*spec.overrides, *variant["overrides"], *place],
            [*spec.eval_overrides, *variant["eval_overrides"], *place, f"eval.out_dir={cell_dir(spec, cell) / 'eval'}"])


def _outside(path: Any, cell: Path) -> bool:
    """Whether a configured output location (a path, or a ``file:`` URI) lies outside the cell's folder."""
    from urllib.parse import urlparse

    if not isinstance(path, str) or not path:
        return False
    parsed = urlparse(path)
    if parsed.scheme and parsed.scheme != "file" and len(parsed.scheme) > 1:  # http://, databricks://: not a folder
        return False
    target = Path(parsed.path if parsed.scheme == "file" else path).resolve()
    return not target.is_relative_to(cell.resolve())


def check_cell_outputs(spec: Spec) -> None:
    """Every variant's composed training config (its ``train`` file with the spec's and its overrides, as its
    cells run it) writes inside its cell's folder: the run folder, ``trainer.default_root_dir`` and each
    logger's ``save_dir`` / ``tracking_uri``. A `ConfigError` names the variant and the key. On the way, every
    variant's training config is checked as ``train`` checks it (`check_config`: names and keys, its
    ``imports:`` imported as ``train`` would) and its evaluation config loaded, before the first cell trains."""
    from omegaconf import OmegaConf

    from regionvlm.config import load_config
    from regionvlm.engine.preflight import check_config
    from regionvlm.registry import import_modules

    for variant in spec.variants:
        cell = Cell(0, variant, spec.seeds[0])
        train_overrides, eval_overrides = cell_overrides(spec, cell)
        where = f"{spec.path} variants.{variant}"
        try:
            train_config = cell_train_config(spec, cell)
            loaded = load_config(train_config, train_overrides)
            import_modules(loaded.imports, search_dirs=[Path(train_config).resolve().parent])
            cfg = OmegaConf.to_container(loaded, resolve=True)
            check_config(cfg, str(train_config))
            load_config(spec.eval, eval_overrides)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        folder = cell_dir(spec, cell)
        places = [("trainer.default_root_dir", (cfg.get("trainer") or {}).get("default_root_dir"))]
        for i, node in enumerate(cfg.get("loggers") or []):
            if isinstance(node, dict):
                places += [(f"loggers[{i}].{k}", node.get(k)) for k in ("save_dir", "tracking_uri", "dir")]
        for key, value in places:
            if _outside(value, folder):
                raise ConfigError(f"{where}: {key} '{value}' lies outside the cell's folder {folder}; a cell writes "
                                  f"only below the sweep's output (remove the key: its default is the cell's folder)")
