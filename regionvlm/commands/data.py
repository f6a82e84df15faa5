"""``regionvlm data synth|tokenizer``: write the bundled synthetic region set, or the tiny preset's tokenizer."""

from __future__ import annotations

import argparse
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    synth = sub.add_parser("synth", help="write the synthetic region set in the official formats")
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--n", type=int, default=2000, help="number of training images (default 2000)")
    synth.add_argument("--n-val", type=int, default=300, help="number of validation images (default 300)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--image-size", type=int, default=128, help="image side in pixels (default 128)")
    tok = sub.add_parser("tokenizer", help="train the tiny byte-level BPE tokenizer offline")
    tok.add_argument("--out", required=True, help="output directory (save_pretrained layout)")
    tok.add_argument("--vocab-size", type=int, default=1024, help="vocabulary size (default 1024)")


def run(args: argparse.Namespace) -> int:
    from regionvlm.errors import UserError

    if args.data_command == "synth":
        from regionvlm.data.synth.writers import write_synthetic

        if args.n < 1 or args.n_val < 0:
            raise UserError(f"--n must be >= 1 and --n-val >= 0, got {args.n} and {args.n_val}")
        t0 = time.perf_counter()
        write_synthetic(args.out, args.n, args.n_val, args.seed, args.image_size)
        print(f"wrote {args.n} train + {args.n_val} val images to {args.out} in {time.perf_counter() - t0:.1f} s")
        return 0
    from regionvlm.data.synth.tokenizer import train_tiny_tokenizer

    tok = train_tiny_tokenizer(args.out, vocab_size=args.vocab_size)
    print(f"wrote a byte-level BPE tokenizer ({len(tok)} tokens) to {args.out}")
    return 0
