"""``regionvlm eval CONFIG (--model EXPORT_DIR | --ckpt PATH) [key=value ...]``.

The config's ``eval:`` section: ``benchmarks: {name: {annotations: ..., images: ..., limit: ...}}`` (each
node overrides the benchmark's YAML in ``benchmarks/``), ``batch_size``, ``num_workers``, ``out_dir``
(default: the run directory's ``eval/``), ``gallery`` (examples drawn per benchmark). ``trainer:`` picks the
devices and precision of the predict loop (generation runs on every device; scoring on rank 0, its result
broadcast to the others); ``generation:`` the decoding settings.

Rerunning after a kill resumes: benchmarks whose predictions the killed run wrote are scored from them (each
``predictions.jsonl`` is written whole, so none is half there). A folder holding finished results, or another
model's predictions, is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import os

from regionvlm.io import dumps_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from regionvlm.commands.engine_options import add_engine_arguments

    parser.add_argument("config", help="YAML config with an eval: section (e.g. projects/rgpt/tiny/eval.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. eval.benchmarks.pope.limit=100")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="an export folder (written by train or export)")
    source.add_argument("--ckpt", help="a training checkpoint (.ckpt) or run directory")
    add_engine_arguments(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of an earlier evaluation in the output folder")


def claim_out_dir(out_dir, run: dict, overwrite: bool) -> bool:
    """Refuse an output folder that holds finished results or another evaluation's predictions (unless
    ``overwrite``); record ``run`` (model and benchmarks) in ``eval_run.json``. True when a killed run of this
    same evaluation can be resumed there."""
    import json

    from regionvlm.errors import UserError
    from regionvlm.io import write_text

    manifest = out_dir / "eval_run.json"
    earlier = json.loads(manifest.read_text()) if manifest.is_file() else None
    if not overwrite:
        if (out_dir / "results.json").exists():
            raise UserError(f"{out_dir}: holds the results of an earlier evaluation; pass --overwrite to replace "
                            f"them or set eval.out_dir=...")
        if earlier is not None and earlier != run and any(out_dir.glob("*/predictions.jsonl")):
            raise UserError(f"{manifest}: the output folder holds predictions of another model or benchmark "
                            f"set; pass --overwrite or set eval.out_dir=...")
    # before the model exists there is no trainer to ask: Lightning's launcher sets these in the other processes
    if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
        write_text(manifest, dumps_json(run, indent=2, default=str) + "\n")
    return earlier == run and not overwrite


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from omegaconf import OmegaConf

    from regionvlm.config import display_path, load_config, resolve_config_path
    from regionvlm.engine.preflight import check_config, missing_benchmark_files
    from regionvlm.evaluation.runner import eval_settings
    from regionvlm.registry import construct, import_modules

    path = resolve_config_path(args.config)  # a file or an installed recipe's name
    cfg = load_config(path, args.overrides)
    import_modules(cfg.imports, search_dirs=[path.resolve().parent])
    config = OmegaConf.to_container(cfg, resolve=True)
    check_config(config, display_path(path))  # the dry run's checks, before a model is loaded
    missing = missing_benchmark_files(config.get("eval") or {})
    if missing:
        from regionvlm.errors import ConfigError

        more = f" (and {len(missing) - 1} more: {'; '.join(missing[1:])})" if len(missing) > 1 else ""
        raise ConfigError(f"{display_path(path)} {missing[0]}{more}")
    settings = construct(eval_settings, config["eval"], key_path="eval")
    out_dir = Path(settings.pop("out_dir") or Path(cfg.output.root) / cfg.output.name / "eval")

    from regionvlm.card import load_export
    from regionvlm.commands.engine_options import open_engine
    from regionvlm.engine.checkpoint import load_checkpoint
    from regionvlm.engine.module import RegionVLMModule
    from regionvlm.engine.trainer import build_trainer
    from regionvlm.errors import UserError
    from regionvlm.evaluation.reports import print_results
    from regionvlm.evaluation.runner import evaluate

    resume = claim_out_dir(out_dir, {"model": str(Path(args.model or args.ckpt).resolve()),
                                     "benchmarks": settings["benchmarks"]}, args.overwrite)
    model, tokenizer, model_config = load_export(args.model) if args.model else load_checkpoint(args.ckpt)
    # decoding: this config's `generation:` (its schema fills every key: one protocol for every model), else,
    # with `~generation`, the model's card; a benchmark's own protocol goes on top in `evaluate`
    generation = {**(model_config.get("generation") or {}), **(config.get("generation") or {})}
    module = RegionVLMModule({**model_config, "generation": generation}, model=model, tokenizer=tokenizer)
    trainer = build_trainer(config, None, enable_progress_bar=False)
    chat = None
    if args.engine == "vllm":  # generation through vLLM; the front end (embeddings) runs here, on one device
        from regionvlm.inference import RegionChat

        if trainer.world_size > 1:
            raise UserError("--engine vllm: one process computes the embeddings (vLLM spreads the LLM itself); "
                            "set trainer.devices=1")
        chat = open_engine(RegionChat(model, tokenizer, model_config, device=str(trainer.strategy.root_device)),
                           args, args.model)
    else:
        open_engine(None, args, None)  # vLLM's flags without --engine vllm: an error
    try:
        results = evaluate(module, trainer, out_dir=out_dir, resume=resume, chat=chat, **settings)
    finally:
        if chat is not None:
            chat.close()
    if trainer.is_global_zero:
        print_results(results, title=f"results ({args.model or args.ckpt})")
        print(f"predictions and results written to {out_dir}")
    return 0
