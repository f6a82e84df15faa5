"""Registries of swappable components, one per kind, assembled from config nodes.

A config node is ``{type: <registered name>, **kwargs}``; ``REGISTRY.build(node, key_path=..., **runtime)``
constructs it. Runtime values (hidden sizes, token ids) come from code, never from the user, and are only
passed to constructors that accept them.

Loud by design (the most reported LAVIS bug is a registry silently returning ``None``):
unknown names, duplicate names, unexpected and missing keys all raise `RegistryError` with the key path,
the known names and close matches.

Nothing heavy happens at import: built-in plugins are imported on the first lookup of their registry,
third-party plugins come from the ``regionvlm.plugins`` entry-point group or a config's ``imports:`` list.
A registry counts as loaded only once its built-in modules imported without error (a failed import is raised
again at the next lookup). Entry-point plugins load one by one: a broken one is a warning (once), named again
when a lookup misses, and does not stop the others from registering.

A component that raises inside its constructor (anything but a `UserError`) or breaks its kind's contract
(`regionvlm.contracts`) is a `PluginError`: a bug of that plugin, reported with its name and defining place.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from regionvlm.contracts import CONTRACTS, Captioner, contract_violation
from regionvlm.errors import PluginError, RegistryError, UserError

ENTRY_POINT_GROUP = "regionvlm.plugins"


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _where(obj: Any) -> str:
    try:
        return f"{inspect.getsourcefile(obj)}:{inspect.getsourcelines(obj)[1]}"
    except (TypeError, OSError):
        return getattr(obj, "__module__", "?")


def qualified_name(obj: Any) -> str:
    """``package.module:Class`` — where a registered component is defined."""
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', getattr(obj, '__name__', repr(obj)))}"


def _same_definition(a: Any, b: Any) -> bool:
    """True for the same class or function defined again by re-importing its module (after a failed import)."""
    return qualified_name(a) == qualified_name(b) and "<locals>" not in qualified_name(a)


def first_doc_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry:
    """Name → class (or factory function) for one kind of component."""

    def __init__(self, kind: str, builtin_modules: tuple[str, ...] = (), contract: type | None = None):
        self.kind = kind
        self.builtin_modules = builtin_modules
        self.contract = contract  # a `regionvlm.contracts` Protocol that every built component must meet
        self._items: dict[str, Any] = {}
        self._loaded = False
        self._loading = False  # a built-in module that looks names up while it is being imported

    # -- registration -------------------------------------------------------------------------------------
    def register(self, name: str | None = None) -> Callable[[Any], Any]:
        """Decorator: ``@PROJECTORS.register("mlp")``. A duplicate name is an error naming both places."""

        def deco(obj: Any) -> Any:
            key = name or obj.__name__
            if key in self._items and not _same_definition(self._items[key], obj):
                raise RegistryError(
                    f"{self.kind} '{key}' is already registered (first at {_where(self._items[key])}); "
                    f"cannot register it again at {_where(obj)}"
                )
            self._items[key] = obj
            return obj

        return deco

    # -- lookup -------------------------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            for module in self.builtin_modules:
                importlib.import_module(module)
            load_entry_point_plugins()
            self._loaded = True  # only now: a failed import is raised again at the next lookup
        finally:
            self._loading = False

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return name in self._items

    def get(self, name: str, key_path: str = "") -> Any:
        self._ensure_loaded()
        if name not in self._items:
            where = f"{key_path}: " if key_path else ""
            known = ", ".join(sorted(self._items)) or "(none)"
            broken = "".join(f"; note: {line}" for line in _plugin_failures)  # perhaps the name lives there
            raise RegistryError(
                f"{where}no {self.kind} named '{name}'{_did_you_mean(name, self._items)} known: {known}{broken}"
            )
        return self._items[name]

    def items(self) -> list[tuple[str, Any]]:
        self._ensure_loaded()
        return sorted(self._items.items())

    # -- construction -------------------------------------------------------------------------------------
    def _parse(self, node: Any, key_path: str) -> tuple[str, Any, dict[str, Any]]:
        """``node`` (``{type: name, **kwargs}``, a DictConfig or a bare name) → (name, registered object, kwargs)."""
        node = to_plain(node)
        if isinstance(node, str):
            node = {"type": node}
        if not isinstance(node, Mapping) or "type" not in node:
            raise RegistryError(f"{key_path or self.kind}: expected a mapping with a 'type' key, got {node!r}")
        kwargs = dict(node)
        name = kwargs.pop("type")
        return name, self.get(name, key_path=f"{key_path}.type" if key_path else ""), kwargs

    def build(self, node: Any, key_path: str = "", **runtime: Any) -> Any:
        """Construct ``node`` = ``{type: name, **kwargs}`` (a dict or DictConfig), adding ``runtime`` values
        that the constructor accepts. ``key_path`` (e.g. ``model.projector``) names the node in errors."""
        name, obj, kwargs = self._parse(node, key_path)
        what = f"{self.kind} '{name}'"
        kwargs = checked_kwargs(obj, kwargs, key_path=key_path, what=what, runtime=runtime)
        try:
            built = obj(**kwargs)
        except (UserError, PluginError):  # the user's mistake, or a nested component's bug already named
            raise
        except Exception as exc:  # the plugin's own bug, not the user's: say which plugin
            raise PluginError(f"internal error in {what} ({qualified_name(obj)}), built at {key_path or self.kind}: "
                              f"{type(exc).__name__}: {exc}") from exc
        problem = contract_violation(built, self.contract) if self.contract is not None else None
        if problem:
            raise PluginError(f"{key_path or self.kind}: {what} ({qualified_name(obj)}) breaks the {self.kind} "
                              f"contract (regionvlm.contracts.{self.contract.__name__}): {problem}")
        return built

    def check_node(self, node: Any, key_path: str, runtime_keys: Iterable[str] = (), require: bool = True) -> None:
        """Check ``node``'s type name and keys as `build` would, without constructing anything (``runtime_keys``:
        the arguments the code supplies; ``require=False``: skip the missing-key check, for nodes whose runtime
        values are not known here)."""
        name, obj, kwargs = self._parse(node, key_path)
        checked_kwargs(obj, kwargs, key_path=key_path, what=f"{self.kind} '{name}'",
                       runtime=dict.fromkeys(runtime_keys), require=require)


def checked_kwargs(obj: Any, kwargs: Mapping[str, Any], key_path: str = "", what: str = "",
                   runtime: Mapping[str, Any] | None = None, require: bool = True,
                   forwards_to: Any = None) -> dict[str, Any]:
    """``kwargs`` + the ``runtime`` values ``obj`` accepts, after checking the keys against its signature, with
    errors that name ``key_path``: unexpected keys (with close matches), keys that the code sets, and (with
    ``require``) missing required keys. ``forwards_to``: where ``obj`` sends its ``**kwargs`` when that is not
    its base class (Lightning's FSDPStrategy passes them to torch's FullyShardedDataParallel): the optional
    parameters of that callable are accepted too."""
    kwargs = dict(to_plain(kwargs) or {})
    runtime = dict(runtime or {})
    what = what or getattr(obj, "__name__", str(obj))
    params, accepts_any = signature_params(obj)
    if forwards_to is not None:
        forwarded = signature_params(forwards_to)[0]
        params = {**{k: p for k, p in forwarded.items() if p.default is not inspect.Parameter.empty}, **params}
    prefix = f"{key_path}." if key_path else ""
    if not accepts_any:
        unknown = [k for k in kwargs if k not in params]
        if unknown:
            user_keys = [p for p in params if p not in runtime]
            raise RegistryError(
                f"{prefix}{unknown[0]}: unexpected key for {what}"
                f"{_did_you_mean(unknown[0], user_keys)} known: {', '.join(user_keys) or '(none)'}"
            )
    for key in runtime:
        if key in kwargs:
            raise RegistryError(f"{prefix}{key}: is set by the code at build time; remove it from the config")
    kwargs.update({k: v for k, v in runtime.items() if accepts_any or k in params})
    missing = [
        p for p, param in params.items()
        if param.default is inspect.Parameter.empty and p not in kwargs
        and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
    ]
    if missing and require:
        raise RegistryError(f"{prefix}{missing[0]}: required key missing for {what}")
    for key, value in kwargs.items():
        if key not in runtime and key in params:
            _check_type(params[key], value, f"{prefix}{key}", what)
    return kwargs


def _check_type(param: inspect.Parameter, value: Any, key: str, what: str) -> None:
    """A value that cannot be what a plain number or ``bool`` default says (``max_steps=abc`` arrives as the
    string 'abc'), caught here rather than as a TypeError deep inside the constructor. Parameters whose annotation
    also admits strings or whose default is None are not judged."""
    default = param.default
    if value is None or type(default) not in (int, float, bool) or "str" in str(param.annotation):
        return
    if type(default) is bool:
        if not isinstance(value, bool):
            raise RegistryError(f"{key}: expected true or false for {what}, got {value!r}")
    elif not isinstance(value, (int, float)) or isinstance(value, bool):  # an int default often takes a float
        raise RegistryError(f"{key}: expected a number for {what}, got {value!r}")


def construct(obj: Any, kwargs: Mapping[str, Any], key_path: str = "", what: str = "", forwards_to: Any = None,
              **runtime: Any) -> Any:
    """Call ``obj(**kwargs, **runtime)`` after `checked_kwargs`; for the engine's own classes (Lightning's Trainer,
    the data module): their exceptions pass through unchanged."""
    return obj(**checked_kwargs(obj, kwargs, key_path=key_path, what=what, runtime=runtime, forwards_to=forwards_to))


def signature_params(obj: Any) -> tuple[dict[str, inspect.Parameter], bool]:
    """The keyword parameters of a function or a class's ``__init__``, and whether any keyword is accepted.

    A class whose ``__init__`` forwards ``**kwargs`` to its base gets the base's parameters too (following the
    MRO until an ``__init__`` without ``**kwargs``), so unknown keys are still caught by name."""
    params: dict[str, inspect.Parameter] = {}
    chain = [c.__init__ for c in obj.__mro__ if "__init__" in vars(c)] if inspect.isclass(obj) else [obj]
    for fn in chain:
        if fn is object.__init__:
            return params, True  # kwargs reach object.__init__ only if something else consumes them
        sig = inspect.signature(fn)
        for name, p in sig.parameters.items():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name != "self":
                params.setdefault(name, p)
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return params, False
    return params, True


def to_plain(node: Any) -> Any:
    """DictConfig/ListConfig → resolved plain containers; anything else unchanged."""
    if type(node).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(node, resolve=True)
    return node


# -- plugin discovery -----------------------------------------------------------------------------------------
_entry_points_loaded = False
_plugin_failures: list[str] = []  # one line per entry point that failed to import


def load_entry_point_plugins() -> list[str]:
    """Import every module named in the ``regionvlm.plugins`` entry-point group (once), each on its own: a
    broken plugin is warned about once and does not stop the others. Returns the failures, one line each."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return _plugin_failures
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken third-party plugin must say which one it is
            line = f"plugin entry point '{ep.name}' ({ep.value}) failed to import: {type(exc).__name__}: {exc}"
            _plugin_failures.append(line)
            warnings.warn(line, RuntimeWarning, stacklevel=2)
    return _plugin_failures


def import_modules(modules: Iterable[str], key_path: str = "imports", search_dirs: Iterable[str] = ()) -> None:
    """Import the modules a config lists under ``imports:`` so that they register their components. Modules
    are found on ``sys.path`` or in ``search_dirs`` (the commands pass the config file's folder), which are
    added to ``sys.path`` so that DataLoader workers find them too."""
    import sys

    for folder in search_dirs:
        folder = str(folder)
        if folder not in sys.path:
            sys.path.append(folder)
    for i, module in enumerate(modules):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            raise UserError(f"{key_path}[{i}]: cannot import module '{module}': {exc}") from exc


# -- the registries -------------------------------------------------------------------------------------------
VISION_ENCODERS = Registry("vision_encoder", ("regionvlm.plugins.vision",), CONTRACTS["vision_encoder"])
FEATURE_REFINERS = Registry("feature_refiner", ("regionvlm.plugins.refiners",), CONTRACTS["feature_refiner"])
REGION_EXTRACTORS = Registry("region_extractor", ("regionvlm.plugins.regions",), CONTRACTS["region_extractor"])
PROJECTORS = Registry("projector", ("regionvlm.plugins.projectors",), CONTRACTS["projector"])
LLMS = Registry("llm", ("regionvlm.plugins.llms",), CONTRACTS["llm"])
HEADS = Registry("head", ("regionvlm.plugins.heads",), CONTRACTS["head"])
PROMPTS = Registry("prompt", ("regionvlm.text.prompts",))
DATASETS = Registry("dataset", ("regionvlm.data.datasets",))
BENCHMARKS = Registry("benchmark", ("regionvlm.benchmarks",))
JUDGES = Registry("judge", ("regionvlm.evaluation.judges",))
OPTIMIZERS = Registry("optimizer", ("regionvlm.engine.optim",))  # torch.optim's by name; plugins add their own
CAPTIONERS = Registry("captioner", ("regionvlm.datagen.captioners",), Captioner)  # regionvlm datagen

REGISTRIES: dict[str, Registry] = {
    r.kind: r
    for r in (VISION_ENCODERS, FEATURE_REFINERS, REGION_EXTRACTORS, PROJECTORS, LLMS, HEADS, PROMPTS,
              DATASETS, BENCHMARKS, JUDGES, OPTIMIZERS, CAPTIONERS)
}


def registry_for(kind: str) -> Registry:
    if kind not in REGISTRIES:
        raise UserError(f"no registry kind '{kind}'{_did_you_mean(kind, REGISTRIES)} known: {', '.join(REGISTRIES)}")
    return REGISTRIES[kind]
