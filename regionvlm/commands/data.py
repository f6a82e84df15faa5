"""``regionvlm data synth|tokenizer|show``: write the bundled synthetic region set or the tiny preset's tokenizer;
``show CONFIG [key=value ...] [-n N] [--split train|val] [--out PNG]``: what a config's dataset nodes render —
each sample's id, task, regions and conversation (the questions and answers the model is trained or evaluated
on), and with ``--out`` a picture of the samples with their regions drawn."""

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
    show = sub.add_parser("show", help="preview the samples a config's dataset nodes render (text and a picture)")
    show.add_argument("config", help="YAML config or installed recipe with a data: section")
    show.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. data.train.0.regions_per_sample=1")
    show.add_argument("-n", type=int, default=4, help="samples per dataset (default 4)")
    show.add_argument("--split", choices=("train", "val"), default="train",
                      help="which list of data: (train: a training epoch's phrasing; val: the evaluation phrasing)")
    show.add_argument("--out", help="also draw the samples (regions numbered as <regionK>) into this PNG")
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
    if args.data_command == "show":
        return show(args)
    from regionvlm.data.synth.tokenizer import train_tiny_tokenizer

    tok = train_tiny_tokenizer(args.out, vocab_size=args.vocab_size)
    print(f"wrote a byte-level BPE tokenizer ({len(tok)} tokens) to {args.out}")
    return 0


def show(args: argparse.Namespace) -> int:
    """Print (and draw) the first ``-n`` samples of every dataset node of ``data.<split>``, built exactly as
    training builds them (the same nodes, seed and epoch-0 phrasing; ``val``: the evaluation phrasing)."""
    from omegaconf import OmegaConf

    from regionvlm.config import display_path, load_config, resolve_config_path
    from regionvlm.engine.preflight import check_config
    from regionvlm.errors import UserError
    from regionvlm.registry import DATASETS, import_modules

    if args.n < 1:
        raise UserError(f"-n: expected at least 1 sample, got {args.n}")
    path = resolve_config_path(args.config)
    cfg = load_config(path, args.overrides)
    import_modules(cfg.imports, search_dirs=[path.resolve().parent])
    config = OmegaConf.to_container(cfg, resolve=True)
    check_config(config, display_path(path))
    nodes = (config.get("data") or {}).get(args.split) or []
    if not nodes:
        raise UserError(f"{display_path(path)} data.{args.split}: no dataset nodes to show")
    pictures = []
    for i, node in enumerate(nodes):
        node = {k: v for k, v in node.items() if k != "ratio"}
        node.setdefault("train", args.split == "train")
        node.setdefault("seed", int(config.get("seed", 0)))
        dataset = DATASETS.build(node, key_path=f"data.{args.split}[{i}]")
        print(f"== data.{args.split}[{i}]: {node['type']} ({len(dataset)} samples)")
        for k in range(min(args.n, len(dataset))):
            sample = dataset[k]
            lines = sample_lines(sample)
            print("\n".join(lines) + "\n")
            if args.out and sample.get("image") is not None:
                pictures.append(sample_picture(sample, lines))
    if args.out:
        from regionvlm.viz import grid, save_png

        if not pictures:
            raise UserError(f"--out: no sample of data.{args.split} has an image to draw")
        save_png(grid(pictures, columns=1), args.out)
        print(f"picture written to {args.out}")
    return 0


def sample_lines(sample: dict) -> list[str]:
    """A raw sample as text: id, task, regions, then each turn (a grouped sample's turns one by one)."""
    regions = sample.get("regions")
    kinds = ", ".join(f"<region{k + 1}> {kind}" for k, kind in enumerate(regions.kinds)) if regions else "none"
    lines = [f"{sample.get('id')} [{sample.get('task', '?')}] image {sample.get('image')}", f"regions: {kinds}"]
    for conv in sample.get("turns") or [sample["conversations"]]:
        for turn in conv:
            who = "Q" if turn.get("from", turn.get("role")) in ("human", "user") else "A"
            lines.append(f"{who}: {turn.get('value', turn.get('content'))}")
    return lines


def sample_picture(sample: dict, lines: list[str]):
    from regionvlm.viz import draw_regions, with_text_panel

    return with_text_panel(draw_regions(sample["image"], sample["regions"]), lines)
