"""Training callbacks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from regionvlm.io import dumps_json


class GenerationSamples(L.Callback):
    """After each validation, generate answers for the first ``num_samples`` validation prompts and append them
    (with the reference) to ``<run_dir>/samples.jsonl``, and print them: a loss says how well, a few answers
    say what.

    Every process generates (under FSDP or ZeRO-3 a forward pass is collective: a rank that skipped it would
    leave the others waiting forever); only global rank 0 writes and prints. ``last_texts`` keeps this
    process's latest answers."""

    def __init__(self, run_dir: str | Path | None = None, num_samples: int = 4):
        self.path = Path(run_dir) / "samples.jsonl" if run_dir is not None else None
        self.num_samples = num_samples
        self.last_texts: list[str] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        datamodule = trainer.datamodule
        if trainer.sanity_checking or not hasattr(datamodule, "generation_batch"):
            return
        batch = datamodule.generation_batch(self.num_samples)
        if batch is None or len(batch) == 0:
            return
        self.last_texts = pl_module.generate_text(batch.to(pl_module.device))
        if not trainer.is_global_zero:
            return
        from regionvlm.evaluation.reports import reference_text

        rows = [{"step": trainer.global_step, "id": i, "prediction": t, "reference": reference_text(r)}
                for i, t, r in zip(batch.ids, self.last_texts, batch.targets)]
        if self.path is not None:
            with self.path.open("a") as f:
                f.writelines(dumps_json(r) + "\n" for r in rows)
        from regionvlm.engine.loggers import log_samples

        log_samples(trainer.loggers, rows, trainer.global_step)
        for r in rows:
            print(f"[step {r['step']}] {r['id']}: {r['prediction']!r} (reference: {r['reference']!r})")


class CurrentLastCheckpoint(Checkpoint):
    """Keep ``last.ckpt`` current where Lightning's ``ModelCheckpoint`` (after each epoch or validation) leaves
    it behind:

    - every ``every_n_steps`` optimizer steps (``trainer.checkpoint_every_n_steps``), besides Lightning's saves
      (its own ``every_n_train_steps`` would replace them);
    - at the end of training, when the last step was not saved (training ended by ``max_steps`` mid-epoch, or
      between ``checkpoint_every_n_steps``): otherwise ``last.ckpt`` holds an earlier step and ``regionvlm
      export RUN_DIR`` would export an older model than the run's ``export/``;
    - when the job is told to stop (SIGTERM: a scheduler's preemption or time limit, ``kill``), so ``regionvlm
      train ... --resume last`` loses at most the step in progress. Lightning turns SIGTERM into a
      ``SIGTERMException`` at the end of the current step (every rank at once under DDP), where the state is
      whole. Other exceptions save nothing: a NaN loss or a bug must not overwrite a good ``last.ckpt``.

    A `Checkpoint` subclass, so Lightning runs it after ``ModelCheckpoint`` and sees that one's saves."""

    def __init__(self, path: str | Path, every_n_steps: int | None = None):
        self.path = Path(path)
        self.every_n_steps = every_n_steps
        self.saved_step = -1

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: Any, checkpoint: dict) -> None:
        self.saved_step = trainer.global_step  # any save of this run, ModelCheckpoint's or ours

    def save_if_behind(self, trainer: L.Trainer) -> None:
        if trainer.global_step > 0 and self.saved_step != trainer.global_step:
            trainer.save_checkpoint(self.path)  # every rank calls it (collective where the strategy needs it)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        # after the optimizer step (global_step counts those: accumulation's other micro-batches repeat it)
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.save_if_behind(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.save_if_behind(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: Any, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException):
            self.save_if_behind(trainer)


def progress_bar() -> L.Callback:
    """Lightning's rich progress bar without its two misreadings: ``Epoch 2/-2`` when ``max_steps`` ends the run
    (``max_epochs: -1``; now ``Epoch 2``, the bar itself counting the steps) and the logger's version
    (``v_num: logs``: the CSV logger's folder name, not a number)."""
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
    from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

    base = RichProgressBar if _RICH_AVAILABLE else TQDMProgressBar

    class ProgressBar(base):
        def _get_train_description(self, current_epoch: int) -> str:
            trainer = self.trainer
            text = f"Epoch {current_epoch}"
            if trainer.max_epochs is not None and trainer.max_epochs > 0:
                text += f"/{trainer.max_epochs - 1}"
            return text

        def get_metrics(self, trainer: L.Trainer, pl_module: Any) -> dict:
            items = super().get_metrics(trainer, pl_module)
            items.pop("v_num", None)
            return items

    return ProgressBar()
