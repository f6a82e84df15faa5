"""Layered YAML configs on OmegaConf.

A config is a YAML file, or the name of a recipe installed with the package (``rgpt/tiny/stage2``: the
repository's ``projects/rgpt/tiny/stage2.yaml``, shipped as ``regionvlm.recipes``); a file of that name wins.

Precedence, lowest first: schema defaults < ``_base_`` files (in order, recursively) < the file < CLI overrides.
- ``_base_: path`` or a list of paths, relative to the file that names them; mappings merge deeply, lists are
  replaced (not concatenated); cycles are an error; a file reached twice is applied once, where first reached.
- ``{{fileDirname}}`` in a file is replaced by that file's directory (as in mmengine), so a config can point at
  files beside it without machine paths; ``${oc.env:VAR,default}`` and ``${...}`` interpolate as usual.
- Top-level sections are validated against `RootConfig`: an unknown or mistyped key is an error naming the
  file (or "override") and the key path. Component nodes under ``model``/``data``/``eval`` are validated where
  they are built (`regionvlm.registry.construct`), with the same key paths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regionvlm.errors import ConfigError
from regionvlm.registry import _did_you_mean

BASE_KEY = "_base_"
ONE_SEED = "there is one seed, the top-level 'seed' (model init, data order, prompt phrasing); set 'seed' instead"


@dataclass
class OptimConfig:
    """The optimizer node (``optimizer: {type: adamw, betas: [0.9, 0.999]}``; any name in
    ``regionvlm.engine.optim.OPTIMIZERS``) with a warmup + schedule; learning-rate multipliers per component or
    parameter-name glob (``lr_multipliers: {llm: 0.1, "llm.*.lora_*": 1.0}``)."""

    optimizer: dict[str, Any] = field(default_factory=lambda: {"type": "adamw"})
    lr: float = 1.0e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    schedule: str = "cosine"  # cosine | linear | constant
    min_lr_ratio: float = 0.0
    lr_multipliers: dict[str, float] = field(default_factory=dict)


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class OutputConfig:
    root: str = "${oc.env:REGIONVLM_OUTPUT,runs}"
    name: str = "run"


@dataclass
class RootConfig:
    imports: list[str] = field(default_factory=list)
    seed: int = 0  # the one seed: model init, data mixture order and prompt phrasing (given to the data module)
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    eval: dict[str, Any] = field(default_factory=dict)
    loggers: list[Any] = field(default_factory=lambda: ["csv"])  # regionvlm.engine.loggers
    output: OutputConfig = field(default_factory=OutputConfig)


def display_path(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory when it lies below it (shorter, machine-independent errors)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


RECIPE_SUFFIXES = (".yaml", ".yml")


def recipes_root() -> Path | None:
    """The folder of the installed recipes (package ``regionvlm.recipes``: the repository's ``projects/``, mapped
    by pyproject.toml), or None when the installation has none."""
    from importlib.util import find_spec

    try:
        spec = find_spec("regionvlm.recipes")
    except ImportError:
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


def recipe_names() -> list[str]:
    """Every installed recipe, as the name that `resolve_config_path` accepts (``rgpt/tiny/stage2``)."""
    root = recipes_root()
    if root is None:
        return []
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*")
                  if p.suffix in RECIPE_SUFFIXES and p.is_file())


def resolve_config_path(name: str | os.PathLike) -> Path:
    """``name`` when such a file exists; else the installed recipe of that name (``.yaml`` optional). An unknown
    name is one `ConfigError` line with the close recipe names."""
    path = Path(name)
    if path.exists():
        return path
    root = recipes_root()
    if root is not None and not path.is_absolute():
        for candidate in (root / path, *(root / f"{path}{s}" for s in RECIPE_SUFFIXES)):
            if candidate.suffix in RECIPE_SUFFIXES and candidate.is_file():
                return candidate
    names = recipe_names()
    stem = str(name)[: -len(path.suffix)] if path.suffix in RECIPE_SUFFIXES else str(name)
    known = f" installed recipes: {', '.join(names)}" if names else " (no recipes are installed)"
    raise ConfigError(f"{name}: no such config file or installed recipe{_did_you_mean(stem, names)}{known}")


def _read_layer(path: Path) -> dict:
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{display_path(path)}: cannot read config: {exc.strerror or exc}") from exc
    text = text.replace("{{fileDirname}}", str(path.parent.resolve()))
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{display_path(path)}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{display_path(path)}: a config file must be a mapping, got {type(data).__name__}")
    return data


def file_layers(path: str | os.PathLike, _stack: tuple[Path, ...] = ()) -> list[tuple[str, dict]]:
    """The (source, mapping) layers of a config file in merge order: its bases first, then itself."""
    path = Path(path).resolve()
    if path in _stack:
        chain = " -> ".join(display_path(p) for p in (*_stack, path))
        raise ConfigError(f"{display_path(_stack[-1])}: {BASE_KEY} cycle: {chain}")
    data = _read_layer(path)
    bases = data.pop(BASE_KEY, [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{display_path(path)}: {BASE_KEY}: expected a path or a list of paths")
    layers: list[tuple[str, dict]] = []
    for base in bases:
        base_path = (path.parent / base)
        if not base_path.exists():
            raise ConfigError(f"{display_path(path)}: {BASE_KEY}: no such file '{base}' (looked at {base_path})")
        layers += file_layers(base_path, (*_stack, path))
    layers.append((display_path(path), data))
    return layers


def _first_occurrences(layers: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """Apply a file reached twice (``_base_: [stage1.yaml, tiny/base.yaml]`` both based on base.yaml) once, at
    its first position, so that it cannot undo what a file between its two occurrences set."""
    seen: set[str] = set()
    out = []
    for source, layer in layers:
        if source not in seen:
            seen.add(source)
            out.append((source, layer))
    return out


DELETE = object()  # override value: remove the key


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``["a.b=1", "c=[x,y]", "data.train.0.ratio=2", "~model.x"]`` → ``[(key, value)]``, values parsed by
    OmegaConf's dotlist YAML (``1e-4`` is a float); keys are dotted paths where a number indexes a list.
    ``~key`` deletes the key (value `DELETE`): mappings merge, so replacing a node means deleting keys first."""
    from omegaconf import OmegaConf

    parsed: list[tuple[str, Any]] = []
    for item in overrides:
        if item.startswith("~") and "=" not in item and len(item) > 1:
            parsed.append((item[1:], DELETE))
            continue
        key, sep, value = item.partition("=")
        if not sep or not key or key.strip() != key:
            raise ConfigError(f"override '{item}': expected key=value (e.g. trainer.max_steps=10)")
        try:
            node = OmegaConf.from_dotlist([f"value={value}"])
            parsed.append((key, OmegaConf.to_container(node)["value"]))
        except Exception as exc:
            raise ConfigError(f"override '{item}': invalid value: {exc}") from exc
    return parsed


def _delete(cfg: Any, key: str) -> None:
    from omegaconf import OmegaConf, open_dict

    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if parent is None or leaf not in parent:
        raise ConfigError(f"(override) ~{key}: no such key to delete")
    with open_dict(parent):
        del parent[leaf]


def _merge_error(source: str, exc: Exception) -> ConfigError:
    key = getattr(exc, "full_key", "") or ""
    msg = str(exc).splitlines()[0]
    if "not in" in msg and key:  # unknown key in a structured section
        parent, _, leaf = key.rpartition(".")
        section = _schema_keys(parent)
        hint = _did_you_mean(leaf, section) + (f" known: {', '.join(section)}" if section else "")
        return ConfigError(f"{source} {key}: unknown key{hint}")
    return ConfigError(f"{source} {key or '(root)'}: {msg}")


def _schema_keys(dotted: str) -> list[str]:
    from dataclasses import fields

    cls: Any = RootConfig
    for part in [p for p in dotted.split(".") if p]:
        match = {f.name: f for f in fields(cls)}.get(part)
        if match is None or not hasattr(match.default_factory, "__dataclass_fields__"):
            return []
        cls = match.default_factory
    return [f.name for f in fields(cls)]


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """Load ``path`` (a file or a recipe name, see `resolve_config_path`) with its bases and CLI ``overrides`` into a
    validated `DictConfig` (interpolations kept)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = resolve_config_path(path)
    cfg = OmegaConf.structured(RootConfig)
    for source, layer in _first_occurrences(file_layers(path)):
        if isinstance(layer.get("data"), dict) and "seed" in layer["data"]:
            raise ConfigError(f"{source} data.seed: {ONE_SEED}")
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as exc:
            raise _merge_error(source, exc) from exc
    for key, value in parse_overrides(list(overrides)):
        if key == "data.seed":
            raise ConfigError(f"(override) data.seed: {ONE_SEED}")
        try:
            if value is DELETE:
                _delete(cfg, key)
            else:
                OmegaConf.update(cfg, key, value, merge=True)
        except OmegaConfBaseException as exc:
            raise _merge_error("(override)", exc) from exc
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise _merge_error(display_path(path), exc) from exc
    return cfg


def to_yaml(cfg: Any, resolve: bool = True) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg, resolve=resolve)


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config (what a run really used) atomically."""
    from regionvlm.io import write_text

    write_text(path, to_yaml(cfg, resolve=True))
