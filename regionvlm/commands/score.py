"""``regionvlm score BENCHMARK --predictions FILE --annotations FILE [FILE...]``: score a predictions file
with no model, through the same validation and metrics as ``regionvlm eval``.

A judged benchmark (``dlc``, ``spatial``) keeps its judge's exchanges in a judge cache: ``--judge-cache FILE``, by
default ``<predictions>_eval.json`` (DLC-Bench, DAM's name) or ``<predictions>_judge.json`` beside the
predictions when a judge is configured. A cache that answers every prompt scores with no judge at all."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
    parser.add_argument("--judge-cache", default=None, metavar="FILE",
                        help="judged benchmarks: the judge cache to score from and add to (DLC-Bench: DAM's "
                             "<pred>_eval.json); default with a judge: beside the predictions")
    parser.add_argument("--json", action="store_true",
                        help="print {metric: value} as strict JSON on stdout (a metric over nothing: null)")
    parser.add_argument("--imports", nargs="*", default=[], help="plugin modules that register the benchmark")


def run(args: argparse.Namespace) -> int:
    from regionvlm.config import parse_overrides
    from regionvlm.errors import UserError
    from regionvlm.evaluation.benchmark import load_benchmark
    from regionvlm.evaluation.judge_cache import default_cache_path
    from regionvlm.evaluation.reports import print_results
    from regionvlm.io import dumps_json
    from regionvlm.registry import import_modules

    import_modules(args.imports, key_path="--imports", search_dirs=["."])
    options = dict(parse_overrides(args.option))
    bench = load_benchmark(args.benchmark, annotations=args.annotations, **options)
    suffix = getattr(bench, "judge_cache_suffix", None)
    if args.judge_cache is not None:
        if suffix is None:
            raise UserError(f"--judge-cache: {bench.name} asks no judge (judged benchmarks: dlc, spatial)")
        if Path(args.judge_cache).resolve() == Path(args.predictions).resolve():
            raise UserError(f"--judge-cache {args.judge_cache}: is the predictions file; the cache is written, so "
                            f"give another file (default: beside the predictions)")
        bench.judge_cache = args.judge_cache
    elif suffix is not None and bench.judge_cache is None and bench.judge_node is not None:
        bench.judge_cache = str(default_cache_path(args.predictions, suffix))
    results = bench.score_file(args.predictions, allow_partial=args.allow_partial)
    for note in bench.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(dumps_json(results))
    else:
        print_results({bench.name: results}, title=str(args.predictions))
    return 0
