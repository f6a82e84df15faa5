"""``regionvlm score BENCHMARK --predictions FILE --annotations FILE [FILE...]``: score a predictions file
with no model, through the same validation and metrics as ``regionvlm eval``."""

from __future__ import annotations

import argparse
import json
import sys


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
    parser.add_argument("--imports", nargs="*", default=[], help="plugin modules that register the benchmark")


def run(args: argparse.Namespace) -> int:
    from regionvlm.config import parse_overrides
    from regionvlm.evaluation.benchmark import load_benchmark
    from regionvlm.evaluation.reports import print_results
    from regionvlm.registry import import_modules

    import_modules(args.imports, key_path="--imports", search_dirs=["."])
    options = dict(parse_overrides(args.option))
    bench = load_benchmark(args.benchmark, annotations=args.annotations, **options)
    results = bench.score_file(args.predictions, allow_partial=args.allow_partial)
    for note in bench.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=None))
    else:
        print_results({bench.name: results}, title=str(args.predictions))
    return 0
