"""``regionvlm config CONFIG [key=value ...] [--imports]``: the user's dry run. Checks every registered name and key
the way ``train`` does (without looking for weights or data), then prints the resolved config.

A config's ``imports:`` are Python modules: importing them runs their code. The dry run imports them only with
``--imports``; without it, a component name that no built-in or installed plugin registers is not an error but
a ``note:`` line on stderr ("not checked: ... may be registered by imports: ..."), since one of those modules
may register it, and the command still exits 0. With ``--imports`` they are imported (from the config's folder
too, as ``train`` does) and such a name is checked like any other."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file, or an installed recipe's name (e.g. rgpt/tiny/stage2)")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. optim.lr=1e-4")
    parser.add_argument("--unresolved", action="store_true", help="keep ${...} interpolations as written")
    parser.add_argument("--imports", action="store_true",
                        help="import the modules the config lists under imports: (this runs their code: only for "
                             "configs you trust) and check the names they register; without it those names are "
                             "reported as not checked")


def _accepts_anything(**kwargs):  # stands in for a name only the config's imports could register
    return None


@contextlib.contextmanager
def names_left_to_imports() -> Iterator[list[tuple[str, str, str, str]]]:
    """While active, a registry lookup of an unknown name returns a stand-in that accepts any keys instead of
    raising, and is recorded as ``(key path, kind, name, did-you-mean hint)`` in the yielded list: for checking
    a config whose ``imports:`` are not imported, so that everything else is still checked."""
    from regionvlm.errors import RegistryError
    from regionvlm.registry import Registry, _did_you_mean

    original = Registry.get
    left: list[tuple[str, str, str, str]] = []

    def get(self, name, key_path=""):
        try:
            return original(self, name, key_path)
        except RegistryError:
            left.append((key_path, self.kind, str(name), _did_you_mean(str(name), self.names())))
            return _accepts_anything

    Registry.get = get
    try:
        yield left
    finally:
        Registry.get = original


def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from regionvlm.config import display_path, load_config, resolve_config_path, to_yaml
    from regionvlm.engine.preflight import check_config
    from regionvlm.registry import import_modules

    path = resolve_config_path(args.config)
    cfg = load_config(path, args.overrides)
    imports = list(cfg.imports)
    config = OmegaConf.to_container(cfg, resolve=True)
    if imports and args.imports:
        import_modules(imports, search_dirs=[path.resolve().parent])
    if imports and not args.imports:
        with names_left_to_imports() as left:
            check_config(config, display_path(path))
        for key_path, kind, name, hint in left:
            where = f"{key_path}: " if key_path else ""
            print(f"note: {where}not checked: no built-in or installed {kind} is named {name!r}; it may be registered "
                  f"by imports: {', '.join(imports)}, which were not imported (they run code); pass --imports to "
                  f"import them and check it{hint}", file=sys.stderr)
    else:
        check_config(config, display_path(path))
    print(to_yaml(cfg, resolve=not args.unresolved), end="")
    return 0
