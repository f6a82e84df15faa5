"""``regionvlm train CONFIG [key=value ...] [--resume last|PATH]``.

The run directory ``output.root/output.name`` receives the resolved config, Lightning checkpoints
(``checkpoints/last.ckpt`` ...), a CSV log (``logs/metrics.csv``), validation samples, and at the end the
self-contained ``export/`` folder that ``init_from``, ``eval``, ``predict`` and ``RegionChat`` read.
On SIGTERM (a scheduler's preemption or time limit) the step in progress finishes, ``last.ckpt`` is written
and the command exits with 143; ``--resume last`` continues from there.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file (e.g. projects/rgpt/tiny/stage1.yaml) or an installed "
                                       "recipe's name (rgpt/tiny/stage1; see regionvlm list recipes)")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. trainer.max_steps=10")
    parser.add_argument("--resume", metavar="last|PATH", help="continue from the run's last checkpoint or a path")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")


def run_dir_of(cfg) -> Path:
    return Path(cfg.output.root) / cfg.output.name


def resolve_resume(run_dir: Path, resume: str | None) -> str | None:
    from regionvlm.errors import UserError

    if resume is None:
        return None
    path = run_dir / "checkpoints" / "last.ckpt" if resume == "last" else Path(resume)
    if not path.is_file():
        raise UserError(f"--resume: no checkpoint at {path}")
    return str(path)


def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from regionvlm.config import display_path, load_config, resolve_config_path, save_config
    from regionvlm.engine.preflight import check_inputs
    from regionvlm.errors import UserError
    from regionvlm.registry import import_modules

    path = resolve_config_path(args.config)
    cfg = load_config(path, args.overrides)
    import_modules(cfg.imports, search_dirs=[path.resolve().parent])
    config = OmegaConf.to_container(cfg, resolve=True)
    check_inputs(config, display_path(path))  # names and keys, then missing weights or data: stop before anything
    run_dir = run_dir_of(cfg)
    ckpt_path = resolve_resume(run_dir, args.resume)
    # a run that saved nothing to continue from (it failed before its first checkpoint) does not block a rerun
    started = (run_dir / "export").exists() or any((run_dir / "checkpoints").glob("*.ckpt"))
    if started and ckpt_path is None:
        if not args.overwrite:
            raise UserError(f"{run_dir}: run directory exists; pass --resume last to continue it, "
                            f"--overwrite to start again, or set output.name=...")
        shutil.rmtree(run_dir)
    elif run_dir.exists() and ckpt_path is None:
        from regionvlm.engine.trainer import keep_csv_log

        keep_csv_log(run_dir / "logs" / "metrics.csv")  # the failed run's log stays, as metrics.1.csv
        print(f"{run_dir}: an earlier run saved no checkpoint; starting again", file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from regionvlm.engine.trainer import fit

    try:
        fit(config, run_dir, ckpt_path=ckpt_path)
    except SIGTERMException:  # Lightning's, at the end of the step in progress; CurrentLastCheckpoint saved it
        last = run_dir / "checkpoints" / "last.ckpt"
        saved = f"{last} holds the last finished step" if last.is_file() else "no step had finished"
        print(f"stopped by SIGTERM: {saved}; `regionvlm train {args.config} ... --resume last` continues",
              file=sys.stderr)
        return 128 + signal.SIGTERM  # the usual exit status of a process ended by SIGTERM (143)
    return 0
