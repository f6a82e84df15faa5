"""``regionvlm score BENCHMARK --predictions FILE --annotations FILE [FILE...]``: score a predictions file
with no model, through the same validation and metrics as ``regionvlm eval``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from regionvlm.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("benchmark", help="a registered benchmark name (regionvlm list benchmark) or its YAML file")
    parser.add_argument("--predictions", required=True, help="predictions file (JSON lines with id, text, ...)")
    parser.add_argument("--annotations", nargs="+", default=None,
                        help="the benchmark's official annotation file(s) (see docs/benchmarks.md); "
                             "default: those in the benchmark YAML")
    parser.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help="set a benchmark option, e.g. -o split=test (value parsed as YAML)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="score a file that covers only part of the benchmark (coverage is reported)")
    parser.add_argument("--json", action="store_true", help="print {metric: value} as JSON on stdout")


def _parse_options(items: list[str]) -> dict[str, Any]:
    """``["split=test", "limit=5"]`` → ``{"split": "test", "limit": 5}`` (values read as YAML scalars)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE")
        try:
            out[key] = yaml.safe_load(value) if value else None
        except yaml.YAMLError:
            out[key] = value
    return out


def print_table(title: str, results: dict[str, float], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in results.items():
        table.add_row(k, f"{v:.2f}" if isinstance(v, float) else str(v))
    (console or Console()).print(table)


def run(args: argparse.Namespace) -> int:
    from regionvlm.evaluation.benchmark import load_benchmark

    options = _parse_options(args.option)
    bench = load_benchmark(args.benchmark, annotations=args.annotations, **options)
    results = bench.score_file(args.predictions, allow_partial=args.allow_partial)
    for note in bench.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=None))
    else:
        print_table(f"{bench.name}: {args.predictions}", results)
    return 0
