"""``regionvlm list [KIND]``: the registered components with their one-line docs; ``regionvlm list recipes``:
the recipes installed with the package (names that ``train``, ``eval`` and ``config`` accept)."""

from __future__ import annotations

import argparse

RECIPES = "recipes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", nargs="?",
                        help=f"one registry kind (e.g. region_extractor), or '{RECIPES}'; default: all kinds")
    parser.add_argument("--imports", nargs="*", default=[], help="extra plugin modules to import first")


def _recipe_summary(path) -> str:
    """A recipe's first comment line: what it is for."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    if args.kind == RECIPES:
        from regionvlm.config import recipe_names, resolve_config_path

        table = Table(title="regionvlm recipes (regionvlm train NAME)", show_lines=False)
        table.add_column("name", style="bold")
        table.add_column("description")
        for name in recipe_names():
            table.add_row(name, escape(_recipe_summary(resolve_config_path(name))))
        Console().print(table)
        return 0

    from regionvlm.registry import REGISTRIES, first_doc_line, import_modules, registry_for

    import_modules(args.imports, key_path="--imports")
    registries = [registry_for(args.kind)] if args.kind else list(REGISTRIES.values())
    table = Table(title="regionvlm components", show_lines=False)
    table.add_column("kind", style="cyan")
    table.add_column("name", style="bold")
    table.add_column("description")
    for registry in registries:
        for name, obj in registry.items():
            table.add_row(registry.kind, name, escape(first_doc_line(obj)))  # docs say "Region [x]"
    Console().print(table)
    return 0
