"""``regionvlm export RUN_DIR|CKPT --out DIR [--dtype bf16|fp16|fp32] [--overwrite]``."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a run directory (uses checkpoints/last.ckpt) or a .ckpt file")
    parser.add_argument("--out", required=True, help="the export folder to write")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="cast weights (default fp32)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")


def run(args: argparse.Namespace) -> int:
    from regionvlm.engine.checkpoint import export_checkpoint

    out = export_checkpoint(args.source, args.out, dtype=args.dtype, overwrite=args.overwrite)
    print(f"export written to {out}")
    return 0
