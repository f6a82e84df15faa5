"""``regionvlm list [KIND | NAME]``: the registered components with their one-line docs; ``regionvlm list NAME``
(a component, e.g. ``hf_clip``): its documentation and every argument a config node may set, with defaults;
``regionvlm list recipes``: the recipes installed with the package (names that ``train``, ``eval`` and
``config`` accept)."""

from __future__ import annotations

import argparse

RECIPES = "recipes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", nargs="?", help=f"one registry kind (e.g. region_extractor), a component's name "
                                                f"(e.g. hf_clip: its arguments), or '{RECIPES}'; default: all kinds")
    parser.add_argument("--imports", nargs="*", default=[],
                        help="extra plugin modules to import first (found on sys.path or in the current folder; "
                             "importing runs their code)")


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

    import os

    from regionvlm.registry import REGISTRIES, first_doc_line, import_modules, registry_for

    import_modules(args.imports, key_path="--imports", search_dirs=[os.getcwd()])
    if args.kind and args.kind not in REGISTRIES:
        found = [(r, r.get(args.kind)) for r in REGISTRIES.values() if args.kind in r]
        if found:
            for registry, obj in found:
                describe(registry, args.kind, obj)
            return 0
        from regionvlm.errors import UserError
        from regionvlm.registry import _did_you_mean

        names = [*REGISTRIES, *(n for r in REGISTRIES.values() for n in r.names())]
        raise UserError(f"'{args.kind}': neither a registry kind nor a registered component"
                        f"{_did_you_mean(args.kind, names)} kinds: {', '.join(REGISTRIES)}")
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


def describe(registry, name: str, obj) -> None:
    """One component: where it is defined, its documentation, and the arguments a config node may set (those the
    code supplies at build time are marked)."""
    import inspect

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from regionvlm.contracts import RUNTIME_KEYS
    from regionvlm.registry import qualified_name, signature_params

    console = Console()
    console.print(f"[cyan]{registry.kind}[/cyan] [bold]{escape(name)}[/bold] ({escape(qualified_name(obj))})")
    print(inspect.getdoc(obj) or "(no documentation)")  # as written: its line breaks are the author's
    params, accepts_any = signature_params(obj)
    runtime = set(RUNTIME_KEYS.get(registry.kind, ()))
    table = Table(title=f"{{type: {name}, ...}} — arguments", show_lines=False)
    table.add_column("argument", style="bold")
    table.add_column("default")
    table.add_column("type")
    for key, p in params.items():
        if key in runtime:
            default = "(set by the code)"
        elif p.default is inspect.Parameter.empty:
            default = "(required)"
        else:
            default = repr(p.default)
        annotation = "" if p.annotation is inspect.Parameter.empty else str(p.annotation)
        table.add_row(key, escape(default), escape(annotation))
    console.print(table)
    if accepts_any:
        console.print("(also accepts other keyword arguments)")
