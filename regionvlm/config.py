"""Layered YAML configs on OmegaConf.

A config is a YAML file, or the name of a recipe installed with the package (``rgpt/tiny/stage2``: the
repository's ``projects/rgpt/tiny/stage2.yaml``, shipped as ``regionvlm.recipes``); a file of that name wins.

Precedence, lowest first: schema defaults < ``_base_`` files (in order, recursively) < the file < CLI overrides.
- ``_base_: path`` or a list of paths, relative to the file that names them; mappings merge deeply, lists are
  replaced (not concatenated); cycles are an error; a file reached twice is applied once, where first reached.
- ``null`` is a value like any other (``pretrained: null``: no pretrained weights; ``eval.benchmarks.pope: null``:
  the benchmark with its defaults, as ``pope: {}``); it never removes a key. To remove an inherited key, a layer
  writes it with a ``~`` in front, at the level where it lives, with no value, as the command line's ``~key``
  does: ``eval: {benchmarks: {~coco_cls: }}`` drops the base's ``coco_cls``. A layer's deletions apply before its
  values merge, so ``~projector:`` beside ``projector: {type: linear}`` replaces the inherited node instead of
  merging into it. Deleting a key that no earlier layer set is an error (a typo would otherwise do nothing).
- ``{{fileDirname}}`` in a string value is replaced by that file's directory (as in mmengine), so a config can
  point at files beside it without machine paths; it is substituted after parsing, so a folder named
  ``my data #1`` (or holding ``: `` or ``${``) stays one intact string. ``${oc.env:VAR,default}`` and ``${...}``
  interpolate as usual.
- YAML is read strictly: a key given twice in one mapping is an error naming the file, line and key; aliases
  (``*name``) may repeat at most `MAX_ALIAS_EXPANSION` values in all, so a small file cannot expand into
  billions (an alias bomb); recursive aliases and nesting deeper than `MAX_YAML_DEPTH` are refused.
- Top-level sections are validated against `RootConfig`: an unknown or mistyped key is an error naming the
  file (or "override") and the key path. Component nodes under ``model``/``data``/``eval`` are validated where
  they are built (`regionvlm.registry.construct`), with the same key paths. ``seed`` is a whole number in
  0..2**32-1 (what Lightning's ``seed_everything`` and numpy accept); ``output.root`` must be (or become) a folder.
- ``imports:`` lists Python modules that are imported (from the config's folder too) by ``train``, ``eval``,
  ``datagen``: a config with ``imports:`` is code, to be trusted like a script. ``regionvlm config`` imports them
  only with ``--imports``.
- Saved configs (a run's ``config.yaml``, checkpoints, exports) are resolved: they record what the run used, so
  that a checkpoint rebuilds its model alone. The value of an environment variable used through
  ``${oc.env:VAR}`` is therefore written to disk; a variable whose name marks a secret (``*TOKEN*``,
  ``*SECRET*``, ``*PASSWORD*``, ``*API_KEY*``, ...; `SECRET_ENV_PATTERN`) is refused in a config, with the
  advice to let the library read its own variable (``HF_TOKEN``, ``WANDB_API_KEY``).
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
    datagen: dict[str, Any] = field(default_factory=dict)  # `regionvlm datagen` (regionvlm.datagen.settings)
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


MAX_ALIAS_EXPANSION = 10_000  # values YAML aliases may repeat in one file (merging 10 000 values takes ~1.5 s)
MAX_YAML_DEPTH = 32           # nested mappings/lists in one file (OmegaConf's recursion fails near 100)


def _strict_loader(source: str):
    """A `yaml.SafeLoader` class that refuses a key given twice in one mapping and alias expansion beyond
    `MAX_ALIAS_EXPANSION` values (an alias bomb: 9 aliases of 9 aliases ... in 500 bytes expand to 10**9)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue  # `<<: *base` then own keys: overriding merged keys is what merges are for
                    key = self.construct_object(key_node, deep=True)
                    line = key_node.start_mark.line + 1
                    try:
                        first = seen.get(key)
                    except TypeError:  # an unhashable key: the base class reports it
                        continue
                    if first is not None:
                        raise ConfigError(f"{source}: line {line}: duplicate key {key!r} (first at line {first}); "
                                          f"a mapping holds each key once")
                    seen[key] = line
            return super().construct_mapping(node, deep=deep)

        def get_single_node(self):
            node = super().get_single_node()
            if node is not None:
                _check_alias_expansion(node, source)
            return node

    return StrictLoader


def _check_alias_expansion(root: Any, source: str) -> None:
    """Refuse a composed YAML graph whose aliases repeat more than `MAX_ALIAS_EXPANSION` values, that refers to
    itself (``&a [*a]``), or that nests deeper than `MAX_YAML_DEPTH` (OmegaConf recurses ~10 frames a level).
    Counted in one pass over the distinct nodes, so a bomb costs no more than its text."""
    import yaml

    sizes: dict[int, int] = {}
    in_progress: set[int] = set()
    distinct = 0

    def bomb() -> ConfigError:
        return ConfigError(f"{source}: YAML aliases repeat more than {MAX_ALIAS_EXPANSION} values (an alias "
                           f"bomb?); write the values out, or share them with _base_ or ${{...}} interpolation")

    def size(node: Any, depth: int) -> int:  # the number of values `node` expands to, aliases repeated
        nonlocal distinct
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in in_progress:
            raise ConfigError(f"{source}: line {node.start_mark.line + 1}: a YAML alias refers to the node that "
                              f"contains it (a recursive structure); write the value out")
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(f"{source}: line {node.start_mark.line + 1}: YAML nested deeper than {MAX_YAML_DEPTH} "
                              f"levels")
        in_progress.add(key)
        distinct += 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        total = 1
        for child in children:
            total += size(child, depth + 1)
            if total - distinct > MAX_ALIAS_EXPANSION:
                raise bomb()
        in_progress.discard(key)
        sizes[key] = total
        return total

    expanded = size(root, 0)
    if expanded - distinct > MAX_ALIAS_EXPANSION:
        raise bomb()


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML ``text`` strictly (duplicate keys, alias bombs and recursive aliases refused; see the module
    doc), with safe types only. Every problem is one `ConfigError` naming ``source`` and, where known, the line.
    For any YAML that others may have written: configs, ablation specs, model cards."""
    import yaml

    try:
        return yaml.load(text, Loader=_strict_loader(source))  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}:{where} invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply") from None


def _substitute_file_dirname(value: Any, dirname: str) -> Any:
    """``{{fileDirname}}`` in every string value → ``dirname``, after parsing: the folder's name is never YAML
    (``#`` would start a comment, ``: `` a mapping) and never an interpolation (``${`` is escaped)."""
    if isinstance(value, str):
        return value.replace("{{fileDirname}}", dirname) if "{{fileDirname}}" in value else value
    if isinstance(value, dict):
        return {k: _substitute_file_dirname(v, dirname) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_file_dirname(v, dirname) for v in value]
    return value


def _read_layer(path: Path) -> dict:
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{display_path(path)}: not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise ConfigError(f"{display_path(path)}: cannot read config: {exc.strerror or exc}") from exc
    data = load_yaml(text, display_path(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{display_path(path)}: a config file must be a mapping, got {type(data).__name__}")
    return _substitute_file_dirname(data, str(path.parent.resolve()).replace("${", "\\${"))


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
    if key == "seed" and "could not be converted" in msg:  # 1e30, -1.5, "abc": say what a seed may be
        low, high = SEED_RANGE
        value = getattr(exc, "value", None)
        shown = f" got {value!r}" if value is not None else ""
        return ConfigError(f"{source} seed: expected a whole number in {low}..{high} (what Lightning and numpy "
                           f"accept),{shown or ' ' + msg}")
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


DELETE_PREFIX = "~"  # a key `~name:` in a YAML layer removes the inherited `name` (see the module doc)


def _pop_deletions(layer: dict, source: str, prefix: tuple = ()) -> list[tuple]:
    """Take the ``~name:`` entries out of ``layer`` (at every mapping level, not inside lists, which are replaced
    whole anyway) → the key paths to delete before the layer merges."""
    found: list[tuple] = []
    for key in list(layer):
        value = layer[key]
        if isinstance(key, str) and key.startswith(DELETE_PREFIX) and len(key) > 1:
            if value is not None:
                shown = ".".join(map(str, (*prefix, key)))
                raise ConfigError(f"{source} {shown}: a deletion takes no value: write '{key}:' alone to remove the "
                                  f"inherited '{key[1:]}', then '{key[1:]}: ...' beside it to replace it")
            del layer[key]
            found.append((*prefix, key[1:]))
        elif isinstance(value, dict):
            found += _pop_deletions(value, source, (*prefix, key))
    return found


def _schema_default(parts: tuple) -> tuple[bool, Any]:
    """``(True, default)`` when ``parts`` is a key of the `RootConfig` schema (``("optim", "lr")``), else
    ``(False, None)``: deleting a schema key restores its default instead of leaving a hole."""
    from dataclasses import MISSING, fields, is_dataclass

    cls: Any = RootConfig
    for i, part in enumerate(parts):
        match = {f.name: f for f in fields(cls)}.get(part) if is_dataclass(cls) else None
        if match is None:
            return False, None
        if i == len(parts) - 1:
            if match.default_factory is not MISSING:
                return True, match.default_factory()
            return True, match.default
        cls = match.default_factory if match.default_factory is not MISSING else None
    return False, None


def _delete_path(cfg: Any, parts: tuple, source: str) -> None:
    from omegaconf import DictConfig, OmegaConf, open_dict

    node = cfg
    shown = ".".join(map(str, (*parts[:-1], f"{DELETE_PREFIX}{parts[-1]}")))
    for part in parts[:-1]:
        if not isinstance(node, DictConfig) or part not in node:
            node = None
            break
        node = node._get_node(part)
    leaf = parts[-1]
    if not isinstance(node, DictConfig) or leaf not in node:
        raise ConfigError(f"{source} {shown}: no such key to delete (no earlier layer sets it)")
    is_schema_key, default = _schema_default(parts)
    if is_schema_key:
        OmegaConf.update(node, str(leaf), default, merge=False)
        return
    with open_dict(node):
        del node[leaf]


SEED_RANGE = (0, 2**32 - 1)  # lightning.seed_everything (and numpy's legacy seeding) accept exactly these
SECRET_ENV_PATTERN = r"(^|_)(TOKEN|SECRET|SECRETS|PASSWORD|PASSWD|KEY|APIKEY|CREDENTIAL|CREDENTIALS)(_|$)"
_ENV_REF = r"oc\.env\s*:\s*['\"]?([A-Za-z_][A-Za-z0-9_]*)"


def _env_references(node: Any, path: str = "") -> list[tuple[str, str]]:
    """``(key path, variable)`` for every ``${oc.env:VAR...}`` in an unresolved container."""
    import re

    found = []
    if isinstance(node, str):
        found += [(path, name) for name in re.findall(_ENV_REF, node)]
    elif isinstance(node, dict):
        for key, value in node.items():
            found += _env_references(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _env_references(value, f"{path}[{i}]")
    return found


def check_no_secret_env(cfg: Any, source: str) -> None:
    """Refuse ``${oc.env:VAR}`` for a ``VAR`` whose name marks a secret (`SECRET_ENV_PATTERN`: ``HF_TOKEN``,
    ``OPENAI_API_KEY``, ``*_PASSWORD`` ...): configs are saved resolved (a run's config.yaml, checkpoints,
    exports), so its value would be written to disk and travel with them."""
    import re

    from omegaconf import OmegaConf

    for key, name in _env_references(OmegaConf.to_container(cfg, resolve=False)):
        if re.search(SECRET_ENV_PATTERN, name.upper()):
            raise ConfigError(f"{source} {key}: ${{oc.env:{name}}} looks like a secret, and configs are saved "
                              f"resolved (the run's config.yaml, checkpoints, exports), so its value would be written "
                              f"to disk; let the component read the variable itself (e.g. a judge's api_key_env: "
                              f"{name}; huggingface_hub reads HF_TOKEN, wandb WANDB_API_KEY), or rename the "
                              f"variable if it holds no secret")


def _check_seed(value: Any, where: str) -> None:
    low, high = SEED_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}: expected a whole number in {low}..{high} (what Lightning and numpy accept), "
                          f"got {value!r}")


def _check_output_root(output: dict, where: str) -> None:
    """``output.root`` (and the run folder under it) must be, or be creatable as, folders: checked before any
    work, so that ``train`` does not fail at its first write."""
    root = output.get("root")
    if not isinstance(root, str) or not root:
        raise ConfigError(f"{where} output.root: expected a folder path, got {root!r}")
    name = output.get("name")
    if not isinstance(name, str) or not name or "\0" in name:
        raise ConfigError(f"{where} output.name: expected a folder name, got {name!r}")
    for key, target in (("output.root", Path(root)), ("output.name", Path(root) / name)):
        probe = target
        while True:
            if probe.exists() and not probe.is_dir():
                what = "is a file" if probe == target else f"lies below the file '{probe}'"
                raise ConfigError(f"{where} {key}: '{target}' {what}, not a folder; choose another {key}")
            if probe.exists() or probe.parent == probe:
                break
            probe = probe.parent


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
        deletions = _pop_deletions(layer, source)
        try:
            for parts in deletions:
                _delete_path(cfg, parts, source)
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
    check_no_secret_env(cfg, display_path(path))
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise _merge_error(display_path(path), exc) from exc
    _check_seed(resolved.get("seed"), f"{display_path(path)} seed")
    _check_output_root(resolved.get("output") or {}, display_path(path))
    return cfg


def to_yaml(cfg: Any, resolve: bool = True) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg, resolve=resolve)


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config (what a run really used) atomically."""
    from regionvlm.io import write_text

    write_text(path, to_yaml(cfg, resolve=True))
