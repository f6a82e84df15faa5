"""``regionvlm datagen CONFIG [key=value ...] [--dry-run N]``: region captions for annotated images.

The config's ``datagen:`` section names the sources, the selection, the captioner, the prompts, the filters and
the output folder (`regionvlm.datagen.settings`); ``trainer:`` the devices, precision and strategy of the
predict loop (``trainer.devices=8 trainer.strategy=ddp`` on a node; ``torchrun``/SLURM for several). A rerun
continues where a killed one stopped; ``datagen.shard=i datagen.num_shards=n`` splits the images between
independent jobs, the last to finish merging the output.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config with a datagen: section (e.g. projects/rgpt/tiny/datagen.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. datagen.shard=0 datagen.num_shards=4")
    parser.add_argument("--dry-run", type=int, metavar="N", help="caption N images, print the rows, write nothing")


def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from regionvlm.config import display_path, load_config, resolve_config_path
    from regionvlm.datagen.report import print_report
    from regionvlm.datagen.runner import run_datagen
    from regionvlm.errors import UserError
    from regionvlm.registry import import_modules

    if args.dry_run is not None and args.dry_run < 1:
        raise UserError(f"--dry-run: expected a number of images ≥ 1, got {args.dry_run}")
    path = resolve_config_path(args.config)
    cfg = load_config(path, args.overrides)
    import_modules(cfg.imports, search_dirs=[path.resolve().parent])
    config = OmegaConf.to_container(cfg, resolve=True)
    report = run_datagen(config, display_path(path), dry_run_images=args.dry_run)
    if report is not None:
        print_report(report)
    return 0
