"""The LightningModule around `RegionVLM`: freezing, optimisation, logging, generation.

Lightning owns the loop (devices, precision, DDP/FSDP/DeepSpeed strategies, checkpointing); this module only
says what one step does. The model is built in ``configure_model`` (not in ``__init__``), inside the strategy's
init context, so that sharded strategies can initialise it sharded. Every checkpoint carries the architecture
config and the tokenizer files, so ``regionvlm export CKPT`` rebuilds the model from the checkpoint alone.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from regionvlm.batch import Batch
from regionvlm.card import TRAINED_PROMPTS
from regionvlm.contracts import GENERATION_KEYS
from regionvlm.engine.build import build_model_and_tokenizer
from regionvlm.engine.optim import apply_trainable, build_optimizer
from regionvlm.errors import ConfigError, UserError
from regionvlm.model import architecture_config
from regionvlm.processor import RegionProcessor

NONFINITE_POLICIES = ("stop", "skip")


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite (``trainer.on_nonfinite_loss: stop``, the default)."""


def nonfinite_policy(config: dict) -> str:
    """``trainer.on_nonfinite_loss`` (our key inside Lightning's ``trainer:`` section; `build_trainer` takes it out)."""
    policy = (config.get("trainer") or {}).get("on_nonfinite_loss", "stop")
    if policy not in NONFINITE_POLICIES:
        raise ConfigError(f"trainer.on_nonfinite_loss: expected one of {', '.join(NONFINITE_POLICIES)}, got {policy!r}")
    return policy


def set_train_modes(model: torch.nn.Module) -> dict[str, bool]:
    """Train mode for each top-level component with a trainable parameter, eval mode for the others (whole
    components: a LoRA-adapted LLM trains, its dropout on). Returns ``{component: training}``."""
    modes = {name: any(p.requires_grad for p in child.parameters()) for name, child in model.named_children()}
    for name, child in model.named_children():
        child.train(modes[name])
    return modes


class RegionVLMModule(L.LightningModule):
    """Train / validate / predict a `RegionVLM` built from a resolved config (a plain dict)."""

    def __init__(self, config: dict, model: Any = None, tokenizer: Any = None):
        """``config``: the resolved config (a plain dict). ``model``/``tokenizer``: an already-built model (the
        ``eval`` path); without them, Lightning builds the model in `configure_model`."""
        super().__init__()
        self.config = copy.deepcopy(config)
        self.model = model
        self.tokenizer = tokenizer
        self.trainable: dict[str, int] = {}
        self.generation = dict(self.config.get("generation", {}))
        self.collector = None  # set by the evaluation loop: gathers predict_step rows from every process
        self.trained_prompts: dict | None = None  # the datasets' prompts as built (the export's card records them)
        self._step_start = 0.0
        self.skipped_steps = 0
        self.save_hyperparameters({"config": self.config}, ignore=["model", "tokenizer"])
        if model is not None:
            self._model_built()

    def configure_model(self) -> None:
        """Build the model (Lightning calls this inside the strategy's init context, possibly more than once)."""
        if self.model is not None:
            return
        # seeded here, not only at start-up: every rank initialises the same weights (sharded strategies need
        # that), whatever ran before this hook
        L.seed_everything(int(self.config.get("seed", 0)), workers=True, verbose=False)
        self.model, self.tokenizer, self.config["model"] = build_model_and_tokenizer(self.config["model"])
        self._model_built()

    def _model_built(self) -> None:
        model_cfg = self.config["model"]
        self.trainable = apply_trainable(self.model, model_cfg.get("trainable"), model_cfg.get("freeze"))
        # Checkpoints rebuild the model without external weights: store the architecture, not the hub ids.
        arch = copy.deepcopy(self.config)
        arch["model"] = architecture_config(arch["model"], self.model)
        self.save_hyperparameters({"config": arch}, ignore=["model", "tokenizer"])

    def processor(self) -> RegionProcessor:
        """The processor the data module needs (image processing and tokens, the model's sizes and the config's
        ``data:`` settings); valid once the model is built. The export's card records the same."""
        if self.model is None:
            raise RuntimeError("the model is not built yet (Lightning builds it in configure_model)")
        return RegionProcessor.from_training_config(self.config.get("data"), self.model, self.tokenizer)

    # -- checkpoints carry the tokenizer ------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            self.tokenizer.save_pretrained(tmp)
            checkpoint["tokenizer_files"] = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
        if self.trained_prompts is not None:
            checkpoint[TRAINED_PROMPTS] = self.trained_prompts

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.trained_prompts = checkpoint.get(TRAINED_PROMPTS, self.trained_prompts)

    # -- steps --------------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        """Components that train go to train mode, frozen ones to eval mode. Lightning (≥ 2.2) keeps whatever
        mode it finds, and a pretrained Hugging Face model arrives in eval mode: a trained LLM would run without
        its dropout (and LoRA's), a frozen BatchNorm would drift in train mode. Also records the task prompts as
        the data module's datasets built them, for checkpoints and the export."""
        set_train_modes(self.model)
        datamodule = getattr(self._trainer, "datamodule", None)  # (`self.trainer` raises when not attached)
        if hasattr(datamodule, "trained_prompts"):
            self.trained_prompts = datamodule.trained_prompts()

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch.to(device) if isinstance(batch, Batch) else super().transfer_batch_to_device(
            batch, device, dataloader_idx)

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        if len(batch) == 0:  # every sample was dropped by truncation (counted by the collator)
            if self.trainer.world_size > 1:  # the other ranks wait in the gradient all-reduce: join with zeros
                return sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
            return None
        loss = self.model(batch)["loss"]
        if self._nonfinite(loss):
            return None  # every rank skips together: no backward, no optimizer step, no gradient all-reduce
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def _nonfinite(self, loss: torch.Tensor) -> bool:
        """A NaN/inf loss (on any rank) stops training with a clear message, or with ``trainer.on_nonfinite_loss:
        skip`` skips the step (counted in ``train/skipped_steps``); it is never trained on."""
        bad = ~torch.isfinite(loss.detach())
        if self.trainer.world_size > 1:
            bad = self.all_gather(bad).any()
        if not bool(bad):
            return False
        where = f"epoch {self.current_epoch}, step {self.global_step}"
        if nonfinite_policy(self.config) == "stop":
            raise NonFiniteLossError(f"{where}: the loss is {loss.item()}; training stopped (set "
                                     f"trainer.on_nonfinite_loss=skip to skip such steps, or lower optim.lr)")
        self.skipped_steps += 1
        self.log("train/skipped_steps", float(self.skipped_steps), batch_size=1)
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(f"{where}: the loss is {loss.item()}; step skipped ({self.skipped_steps} so far)")
        return True

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        if len(batch) == 0:
            return
        seconds = max(time.perf_counter() - self._step_start, 1e-9)
        real = float(batch.attention_mask.sum())
        self.log("train/samples_per_s", len(batch.ids or batch) / seconds, batch_size=len(batch))
        self.log("train/regions_per_s", len(batch.region_mentions) / seconds, batch_size=len(batch))
        self.log("train/tokens_per_s", real / seconds, batch_size=len(batch))
        # share of the LLM's B×L token slots that are padding (what packing and grouping exist to cut)
        self.log("train/padding_waste", 1.0 - real / max(batch.attention_mask.numel(), 1), batch_size=len(batch))
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=len(batch))  # CSV: bar rounds it

    def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        if len(batch) == 0:
            return None
        loss = self.model(batch)["loss"]
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch))
        return loss

    def generate_text(self, batch: Batch, **overrides: Any) -> list[str]:
        """Greedy/beam/sampled answers for a generation-mode batch, decoded to text."""
        settings = {k: v for k, v in {**self.generation, **overrides}.items() if k in GENERATION_KEYS}
        ids = self.model.generate(batch, **settings)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        rows = [{"id": i, "text": t} for i, t in zip(batch.ids, self.generate_text(batch))] if len(batch) else []
        if self.collector is not None:
            self.collector.update(rows)
        return rows

    def configure_optimizers(self) -> dict:
        from omegaconf import OmegaConf

        optim_cfg = OmegaConf.create(self.config.get("optim", {}))
        return build_optimizer(self.model, optim_cfg, self.trainer.estimated_stepping_batches)
