"""Assemble the Lightning Trainer, module and data module from a resolved config, and run them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from regionvlm.registry import construct

# Keys of the ``trainer:`` section that are ours, not Lightning's (build_trainer takes them out):
#   on_nonfinite_loss: stop | skip      what a NaN/inf loss does (RegionVLMModule.training_step)
#   checkpoint_every_n_steps: N         also write last.ckpt every N optimizer steps (see CurrentLastCheckpoint)
OUR_TRAINER_KEYS = ("on_nonfinite_loss", "checkpoint_every_n_steps")
#: Trainer arguments build_trainer sets itself (a config may not: `regionvlm config` says so, as train would)
TRAINER_RUNTIME_KEYS = ("callbacks", "logger", "default_root_dir")


def quiet_lightning() -> None:
    """Hide Lightning's start-up chatter (hardware summary, tips) and warnings that are expected here: the Batch
    dataclass moves itself (`transfer_batch_to_device`), a pytree deprecation inside Lightning, a skipped step."""
    import logging
    import warnings

    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device`.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    # frozen components are in eval mode on purpose (RegionVLMModule.on_fit_start)
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")
    # a step skipped on purpose (`trainer.on_nonfinite_loss: skip`) says so itself
    warnings.filterwarnings("ignore", message=".*`training_step` returned `None`.*")


def build_trainer(config: dict, run_dir: Path | None = None, callbacks: list | None = None, **overrides: Any):
    """A Lightning ``Trainer`` from the ``trainer:`` section (any Trainer argument, plus two of ours, see
    `OUR_TRAINER_KEYS`; unknown keys are errors).
    With ``run_dir``: the ``loggers:`` (default: CSV in ``run_dir/logs``), checkpoints in ``run_dir/checkpoints``
    (``last.ckpt``: after each epoch or validation, every ``checkpoint_every_n_steps`` steps, at the end, and
    when the process gets SIGTERM: `CurrentLastCheckpoint`), each written to a temporary name and renamed
    (`atomic_checkpoint_io`)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    quiet_lightning()
    from regionvlm.engine.strategies import build_strategy

    kwargs = dict(config.get("trainer") or {})
    ours = {k: kwargs.pop(k) for k in OUR_TRAINER_KEYS if k in kwargs}  # on_nonfinite_loss: read by the module
    kwargs.update(overrides)
    if "strategy" in kwargs:
        kwargs["strategy"] = build_strategy(kwargs["strategy"])
    runtime: dict[str, Any] = {"callbacks": list(callbacks or [])}
    if kwargs.get("enable_progress_bar", True):
        from regionvlm.engine.callbacks import progress_bar

        runtime["callbacks"].append(progress_bar())
    if run_dir is not None:
        from regionvlm.engine.callbacks import CurrentLastCheckpoint, GenerationSamples

        runtime["callbacks"].append(GenerationSamples(run_dir))
        runtime["default_root_dir"] = str(run_dir)
        from regionvlm.engine.loggers import build_loggers

        runtime["logger"] = build_loggers(config.get("loggers"), run_dir)
        if "plugins" not in kwargs and "deepspeed" not in str(kwargs.get("strategy", "")):  # DeepSpeed saves itself
            from regionvlm.engine.checkpoint import atomic_checkpoint_io

            kwargs["plugins"] = [atomic_checkpoint_io()]
        runtime["callbacks"].append(ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), save_last=True,
                                                    save_top_k=0 if kwargs.get("limit_val_batches") == 0 else 1,
                                                    monitor=None,
                                                    # last.ckpt is also CurrentLastCheckpoint's: overwrite it, never
                                                    # write a last-v1.ckpt beside it
                                                    enable_version_counter=False))
        runtime["callbacks"].append(CurrentLastCheckpoint(run_dir / "checkpoints" / "last.ckpt",
                                                          ours.get("checkpoint_every_n_steps")))
    else:
        runtime["logger"] = False
        kwargs["enable_checkpointing"] = False  # evaluation writes no checkpoints, whatever the config says
    return construct(L.Trainer, kwargs, key_path="trainer", what="Lightning Trainer", **runtime)


def build_datamodule(config: dict, module: Any, **extra: Any):
    """The `RegionDataModule` for ``config['data']``, seeded by the top-level ``seed``. It gets the module's
    `RegionProcessor` (built from the processor's ``data:`` keys and the model) when it makes its first loader,
    i.e. after Lightning has built the model in ``configure_model``."""
    from regionvlm.data.datamodule import RegionDataModule
    from regionvlm.processor import DATA_KEYS

    loader_cfg = {k: v for k, v in (config.get("data") or {}).items() if k not in DATA_KEYS}
    return construct(RegionDataModule, loader_cfg, key_path="data", processor=module.processor,
                     seed=int(config.get("seed", 0)), **extra)


def fit(config: dict, run_dir: Path, ckpt_path: str | None = None) -> Path:
    """Train per ``config`` into ``run_dir``; writes ``run_dir/export`` at the end. Returns the export folder."""
    import lightning as L

    from regionvlm.card import TRAINED_PROMPTS, save_export
    from regionvlm.engine.module import RegionVLMModule

    if ckpt_path is not None:
        keep_csv_log(run_dir / "logs" / "metrics.csv")
    L.seed_everything(int(config.get("seed", 0)), workers=True, verbose=False)
    module = RegionVLMModule(config)  # the model itself is built by Lightning, in configure_model
    datamodule = build_datamodule(config, module)
    trainer = build_trainer(config, run_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    export_dir = run_dir / "export"
    if trainer.is_global_zero:
        save_export(export_dir, module.model, module.tokenizer, {**config, TRAINED_PROMPTS: module.trained_prompts},
                    overwrite=True)
        print(f"export written to {export_dir}")
    return export_dir


def keep_csv_log(path: Path) -> None:
    """Move a resumed run's CSV log aside (``metrics.csv`` → ``metrics.1.csv``, ``metrics.2.csv``, …): Lightning's
    CSV logger deletes the file it finds, which would lose every row logged before the resume."""
    if not path.is_file():
        return
    n = 1
    while path.with_name(f"metrics.{n}.csv").exists():
        n += 1
    path.rename(path.with_name(f"metrics.{n}.csv"))
