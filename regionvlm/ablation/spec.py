"""The ablation spec (format: `regionvlm.ablation`), its cells, and where each cell's run lives."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regionvlm.errors import ConfigError

SPEC_KEYS = ("train", "eval", "overrides", "eval_overrides", "seeds", "variants", "metrics", "splits", "output")
SPLIT_KEYS = ("patch_size", "image_size", "overlap")


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

    from regionvlm.config import resolve_config_path

    path = resolve_config_path(path)  # a file, or an installed recipe's name (rgpt/tiny/ablations)
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
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
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path} seeds: expected a list of distinct integers, got {seeds!r}")
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
