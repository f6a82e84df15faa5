"""``regionvlm ablate SPEC.yaml [--list | --cell I ... | --table] [--out DIR]``.

Without a flag: every cell not yet finished is trained and evaluated (a rerun skips finished cells), then the
table is written. ``--list`` prints the cells; ``--cell I`` runs those cells only (one job of an array);
``--table`` merges whatever cells have finished into ``table.md``, ``table.json`` and ``chart.png``.
``--jobs N`` runs N cells at a time, each in its own process with 1/N of the CPU threads. The spec's
format is in `regionvlm.ablation` and docs/ablations.md.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="ablation spec YAML (e.g. projects/rgpt/tiny/ablations.yaml)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true", help="print the cells (index, variant, seed, state)")
    what.add_argument("--cell", type=int, nargs="+", metavar="I", help="run only these cells (see --list)")
    what.add_argument("--table", action="store_true", help="only merge the finished cells into the table")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="cells run at a time, each in its own process with 1/N of the CPU threads (default 1)")
    parser.add_argument("--out", help="output folder (default: the spec's output, else runs/ablations/<spec>)")


def run(args: argparse.Namespace) -> int:
    from regionvlm.ablation.cells import run_cell, run_cells_parallel
    from regionvlm.ablation.spec import cell_finished, check_cell_outputs, load_spec
    from regionvlm.ablation.table import markdown_table, write_table
    from regionvlm.errors import UserError

    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: must be at least 1")
    spec = load_spec(args.spec, output=args.out)
    cells = spec.cells()
    if args.list:
        for c in cells:
            state = "done" if cell_finished(spec, c) else "todo"
            print(f"{c.index}\t{c.variant}\tseed={c.seed}\t{state}")
        return 0
    if not args.table:
        check_cell_outputs(spec)  # before the first cell trains: every variant's outputs stay in its folder
        if args.cell is not None:
            bad = [i for i in args.cell if not 0 <= i < len(cells)]
            if bad:
                raise UserError(f"--cell {bad[0]}: {args.spec} has cells 0..{len(cells) - 1} (see --list)")
            chosen = [cells[i] for i in args.cell]
        else:
            chosen = cells
        if args.jobs > 1:
            todo = [c for c in chosen if not cell_finished(spec, c)]
            for c in chosen:
                if c not in todo:
                    print(f"[ablate] cell {c.index} {c.name}: skipped", flush=True)
            print(f"[ablate] {len(todo)} cells, {args.jobs} at a time", flush=True)
            rc = run_cells_parallel(spec, todo, args.jobs)
            if rc:
                return rc
        else:
            for c in chosen:
                print(f"[ablate] cell {c.index}/{len(cells) - 1} {c.name}: ...", flush=True)
                print(f"[ablate] cell {c.index} {c.name}: {run_cell(spec, c)}", flush=True)
        if args.cell is not None:
            return 0
    summary = write_table(spec)
    print(markdown_table(summary), end="")
    print(f"table written to {spec.output}/table.md, table.json, chart.png")
    return 0
