"""``regionvlm list [KIND]``: the registered components with their one-line docs."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", nargs="?", help="one registry kind (e.g. region_extractor); default: all")
    parser.add_argument("--imports", nargs="*", default=[], help="extra plugin modules to import first")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

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
