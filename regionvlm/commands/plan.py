"""``regionvlm plan CONFIG [key=value ...] [--gpus N] [--micro-batch B] [--gpu-memory GIB] [--json]``.

Parameter counts per component (trainable / frozen), memory per GPU for the configured precision, strategy,
LoRA and gradient checkpointing, tokens per step and FLOPs per step — from the architecture alone, built on the
meta device: nothing is allocated and no weight or data file is needed (see regionvlm/engine/plan.py).
"""

from __future__ import annotations

import argparse

from regionvlm.io import dumps_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a training YAML (e.g. projects/rgpt/stage2.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. trainer.strategy=fsdp")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs in the job (default: trainer.devices × num_nodes)")
    parser.add_argument("--micro-batch", type=int, default=None, help="samples per GPU (default: data.batch_size)")
    parser.add_argument("--gpu-memory", type=float, default=None, help="GiB per GPU: say whether the plan fits")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from omegaconf import OmegaConf

    from regionvlm.config import load_config
    from regionvlm.engine.plan import fits, fits_common, format_plan, plan
    from regionvlm.registry import import_modules

    cfg = load_config(args.config, args.overrides)
    import_modules(cfg.imports, search_dirs=[Path(args.config).resolve().parent])
    config = OmegaConf.to_container(cfg, resolve=True)
    model_cfg = dict(config["model"])
    init_from = model_cfg.get("init_from")
    if init_from and Path(init_from).is_dir():
        from regionvlm.card import read_card
        from regionvlm.engine.build import init_from_architecture

        arch, _ = init_from_architecture(model_cfg, read_card(init_from)["model"], init_from)
        config["model"] = {**arch, **{k: model_cfg[k] for k in ("trainable", "freeze") if k in model_cfg}}
    result = plan(config, gpus=args.gpus, micro_batch=args.micro_batch)
    if args.json:
        print(dumps_json(result, indent=2))
        return 0
    print(format_plan(result, args.config))
    if init_from and not Path(init_from).is_dir():
        print(f"(model.init_from {init_from} does not exist yet: planned from this config's own architecture)")
    print(fits(result, args.gpu_memory) if args.gpu_memory else fits_common(result))
    return 0
