"""``regionvlm config CONFIG [key=value ...]``: the user's dry run. Checks every registered name and key the
way ``train`` does (without looking for weights or data), then prints the resolved config."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file, or an installed recipe's name (e.g. rgpt/tiny/stage2)")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. optim.lr=1e-4")
    parser.add_argument("--unresolved", action="store_true", help="keep ${...} interpolations as written")


def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from regionvlm.config import display_path, load_config, resolve_config_path, to_yaml
    from regionvlm.engine.preflight import check_config
    from regionvlm.registry import import_modules

    path = resolve_config_path(args.config)
    cfg = load_config(path, args.overrides)
    import_modules(cfg.imports, search_dirs=[path.parent])
    check_config(OmegaConf.to_container(cfg, resolve=True), display_path(path))
    print(to_yaml(cfg, resolve=not args.unresolved), end="")
    return 0
