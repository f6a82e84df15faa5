"""``regionvlm config CONFIG [key=value ...]``: print the resolved config."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. optim.lr=1e-4")
    parser.add_argument("--unresolved", action="store_true", help="keep ${...} interpolations as written")


def run(args: argparse.Namespace) -> int:
    from regionvlm.config import load_config, to_yaml

    cfg = load_config(args.config, args.overrides)
    print(to_yaml(cfg, resolve=not args.unresolved), end="")
    return 0
