"""`RegionDataModule`: the ``data:`` config section → train/val/predict DataLoaders over a dataset mixture."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler

from regionvlm.data.collate import Collator
from regionvlm.errors import ConfigError
from regionvlm.registry import DATASETS, to_plain


class ProcessedDataset(Dataset):
    """Applies the `ImageProcessor` in ``__getitem__``, i.e. in DataLoader workers (image decoding, mask
    rasterisation), so the training step only receives tensors."""

    def __init__(self, dataset: Dataset, processor):
        self.dataset, self.processor = dataset, processor

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return self.processor.process_sample(self.dataset[i])


class MixtureSampler(DistributedSampler):
    """Indices into a `ConcatDataset` so that dataset k fills ``ratios[k]`` (normalised) of an epoch of
    ``num_samples`` (default: the sum of the lengths). Each dataset is walked through a fresh permutation per
    pass (no repeats before all its samples are used), then the epoch is shuffled. Deterministic in
    (seed, epoch).

    Distributed: rank ``r`` of ``num_replicas`` takes positions ``r, r + n, r + 2n, ...`` of the epoch's order
    (wrapped around so that every rank gets as many), so consecutive global batches of ``n × batch_size`` are
    exactly the batches of one process with that batch size: a run's data does not depend on its device count.
    It is a `DistributedSampler` so that Lightning uses it as is (its wrapper would shuffle the order again).

    Length-grouped (``sample_lengths``: a token-length estimate per index of the `ConcatDataset`, or a function
    of the epoch returning one, and ``shuffle``): the shuffled epoch is cut into megabatches of ``megabatch``
    global batches (``num_replicas × batch_size`` samples each), each megabatch is sorted by length, cut into
    global batches, and the order of the full global batches is shuffled (the one holding the longest sample
    first, so that a run that will run out of memory does so at its first step; a partial last batch stays
    last). Batches then hold samples of similar length (less padding) while the mixture, the per-epoch shuffle,
    the exact resume and the sharding (each rank takes its share of every global batch) are those of the plain
    order, of which it is a permutation."""

    def __init__(self, lengths: Sequence[int], ratios: Sequence[float], num_samples: int | None = None,
                 seed: int = 0, shuffle: bool = True, on_epoch=None, num_replicas: int = 1, rank: int = 0,
                 batch_size: int = 1, progress: Callable[[], tuple[int, float]] | None = None,
                 sample_lengths: Sequence[int] | Callable[[int], Sequence[int]] | None = None, megabatch: int = 50):
        # DistributedSampler.__init__ is not called: it wants a dataset and an initialised process group
        self.lengths, self.seed, self.shuffle, self.epoch = list(lengths), seed, shuffle, 0
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.on_epoch = on_epoch
        self.resume_at: tuple[int, int] | None = None  # (epoch, samples of this rank to skip): see ResumableLoader
        self.batch_size, self.progress = int(batch_size), progress
        weights = np.asarray(ratios, dtype=float)
        self.num_samples = int(num_samples or sum(lengths))
        w = weights / weights.sum()
        counts = np.floor(w * self.num_samples).astype(int)
        counts[np.argsort(-(w * self.num_samples - counts))[: self.num_samples - counts.sum()]] += 1
        self.counts = counts
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.sample_lengths = sample_lengths
        if int(megabatch) < 1:
            raise ValueError(f"megabatch: expected a number of batches >= 1, got {megabatch}")
        self.megabatch = int(megabatch)

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at each epoch start; it also re-seeds the datasets' prompt phrasing. With
        ``progress`` (batches trained so far, batches per epoch), the epoch and the samples to skip are derived
        from the batches trained (see `ResumableLoader`)."""
        if self.progress is not None:
            done, per_epoch = self.progress()
            if 0 < per_epoch < float("inf"):
                epoch, skip = divmod(int(done), int(per_epoch))
                self.resume_at = (epoch, skip * self.batch_size) if skip else None
        self.epoch = epoch
        if self.on_epoch is not None:
            self.on_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.num_replicas)

    def epoch_order(self) -> np.ndarray:
        """The whole epoch's indices, before it is split between ranks."""
        rng = np.random.default_rng([self.seed, self.epoch])
        parts = []
        for n, count, off in zip(self.lengths, self.counts, self.offsets):
            if count == 0:
                continue
            passes = math.ceil(count / n)
            idx = np.concatenate([rng.permutation(n) if self.shuffle else np.arange(n) for _ in range(passes)])
            parts.append(idx[:count] + off)
        order = np.concatenate(parts) if parts else np.zeros(0, dtype=int)
        if self.shuffle:
            order = order[rng.permutation(len(order))]
            if self.sample_lengths is not None:
                order = self._group_by_length(order, rng)
        return order

    def _group_by_length(self, order: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``order`` rearranged into global batches of similar length (see the class docstring)."""
        size = self.batch_size * self.num_replicas
        mega = size * self.megabatch
        by_index = np.asarray(self.sample_lengths(self.epoch) if callable(self.sample_lengths)
                              else self.sample_lengths)
        if len(by_index) != sum(self.lengths):
            raise ValueError(f"sample_lengths: {len(by_index)} lengths for {sum(self.lengths)} samples")
        lengths = by_index[order]
        # sorted longest first (stable: equal lengths keep their shuffled order), so that a partial last
        # batch holds the shortest samples of the last megabatch
        order = np.concatenate([order[s:s + mega][np.argsort(-lengths[s:s + mega], kind="stable")]
                                for s in range(0, len(order), mega)])
        full = len(order) // size
        if full < 2:
            return order
        batches = order[: full * size].reshape(full, size)
        longest = int(np.argmax(by_index[batches].max(axis=1)))
        rest = rng.permutation(full)
        rest = rest[rest != longest]
        return np.concatenate([batches[longest], batches[rest].ravel(), order[full * size:]])

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_order()
        if self.num_replicas > 1 and len(order):
            order = np.resize(order, len(self) * self.num_replicas)[self.rank::self.num_replicas]
        resume, self.resume_at = self.resume_at, None
        if resume is not None and resume[0] == self.epoch:
            order = order[resume[1]:]
        return iter(order.tolist())


class ResumableLoader(DataLoader):
    """The training DataLoader, stateful for Lightning. Its position needs no state of its own: Lightning restores
    its loop counters from the checkpoint, and the sampler re-derives the epoch and the samples to skip from the
    batches trained so far (``progress``, read at every `set_epoch`), not from the epoch number Lightning passes
    (a step-bounded run restored from an epoch-closing checkpoint first replays that epoch with nothing in it,
    which would shift every later epoch by one). The order is a function of (seed, epoch) and each sample's
    prompt rng of (seed, epoch, index), so a resumed run sees exactly the batches an uninterrupted one would.
    The saved state (epoch, batches of it trained) is informational."""

    def __init__(self, *args: Any, position: Callable[[], int], **kw: Any):
        super().__init__(*args, **kw)
        self.position = position

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "batches": int(self.position())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Nothing to restore: see the class docstring."""


class RegionDataModule(L.LightningDataModule):
    """Train/val/predict loaders over a mixture of registered datasets, built from the ``data:`` section.

    ```yaml
    data:
      train:                       # list of dataset nodes; `ratio` = share of an epoch (default 1)
        - {type: coco_instances, ann_file: ..., image_root: ${oc.env:REGIONVLM_DATA,data}/coco/train2017,
           ratio: 2.0, prompt: {type: region_classification, vocabulary: COCO-80}}
        - {type: refcoco, refs_file: ..., instances_file: ..., split: train, task: caption, ratio: 1.0}
      val: [...]                   # same form; concatenated, no ratio, first prompt phrasing
      batch_size: 32
      val_batch_size: null         # default: batch_size
      num_workers: 2
      template: vicuna_v1          # the processor's: vicuna_v1 | plain | chat_template
      max_length: 2048             # the processor's: context length
      padding_side: right
      pack: false                  # several samples per row (attention kept inside each), rows ≤ max_length
      group_by_length: false       # batches of samples of similar estimated token length (less padding)
      length_megabatch: 50         # group_by_length sorts within megabatches of this many global batches
      samples_per_epoch: null      # default: sum of the train datasets' lengths
      processor: {resize_mode: pad}  # the processor's image options; size and mean/std come from the model
    ```

    ``template``, ``max_length`` and ``processor`` are the `RegionProcessor`'s settings
    (`regionvlm.processor.DATA_KEYS`): the engine builds the processor from them and the model
    (`RegionVLMModule.processor`) and gives it here; the other keys are this module's.

    Build: ``construct(RegionDataModule, loader keys, key_path="data", processor=..., seed=cfg.seed)`` where
    ``processor`` is a `RegionProcessor` or a function returning one. A function is called when the first loader
    is made: the engine builds the model in ``configure_model`` (after the data module's ``setup``), and the
    processor's sizes are read off that model. Datasets are built eagerly (their files parsed once, in the main
    process); images are decoded and masks rasterised in the workers (`ProcessedDataset`), tokenised there too
    (`Collator`). ``seed`` (the config's top-level ``seed``, given by the code) and the epoch drive the mixture
    order and the prompt phrasing.
    """

    def __init__(self, processor: Any, train: Sequence[Any] = (), val: Sequence[Any] = (), batch_size: int = 8,
                 val_batch_size: int | None = None, num_workers: int = 0, padding_side: str = "right",
                 pack: bool = False, group_by_length: bool = False, length_megabatch: int = 50,
                 samples_per_epoch: int | None = None, seed: int = 0, pin_memory: bool = False):
        super().__init__()
        self._processor = processor
        self.padding_side = padding_side
        self.pack = bool(pack)
        if isinstance(length_megabatch, bool) or not isinstance(length_megabatch, int) or length_megabatch < 1:
            raise ConfigError(f"data.length_megabatch: expected a number of batches >= 1, got {length_megabatch!r}")
        self.group_by_length, self.length_megabatch = bool(group_by_length), length_megabatch
        self.batch_size, self.val_batch_size = int(batch_size), int(val_batch_size or batch_size)
        self.num_workers, self.pin_memory, self.seed = int(num_workers), pin_memory, seed
        self.train_sets, ratios = self._build(train, "data.train", training=True)
        self.val_sets, _ = self._build(val, "data.val", training=False)
        self.ratios, self.samples_per_epoch = ratios, samples_per_epoch
        self._sampler: MixtureSampler | None = None
        self._lengths: tuple[int, np.ndarray] | None = None  # (epoch, estimated lengths): see train_lengths
        self._chars_per_token: float | None = None

    def _build(self, nodes: Sequence[Any], key: str, training: bool) -> tuple[list[Dataset], list[float]]:
        nodes = to_plain(nodes) or []
        if not isinstance(nodes, list):
            raise ConfigError(f"{key}: expected a list of dataset nodes, got {type(nodes).__name__}")
        sets, ratios = [], []
        for i, node in enumerate(nodes):
            if not isinstance(node, dict):
                raise ConfigError(f"{key}[{i}]: expected a mapping with 'type', got {node!r}")
            node = dict(node)
            ratio = float(node.pop("ratio", 1.0))
            if not ratio > 0 and training:
                raise ConfigError(f"{key}[{i}].ratio: must be > 0, got {ratio}")
            node.setdefault("train", training)
            node.setdefault("seed", self.seed)
            ds = DATASETS.build(node, key_path=f"{key}[{i}]")
            if len(ds) == 0:
                raise ConfigError(f"{key}[{i}]: dataset '{node['type']}' is empty (check split and files)")
            sets.append(ds)
            ratios.append(ratio)
        return sets, ratios

    @cached_property
    def processor(self) -> Any:
        """The `RegionProcessor` (made on first use when a function was given)."""
        return self._processor() if callable(self._processor) else self._processor

    @cached_property
    def train_collator(self) -> Collator:
        return self.processor.collator(padding_side=self.padding_side, pack=self.pack)

    @cached_property
    def predict_collator(self) -> Collator:
        return self.processor.collator(for_generation=True)

    def _loader(self, sets, collator, batch_size, sampler=None, loader=DataLoader, **kw: Any) -> DataLoader:
        data = ConcatDataset([ProcessedDataset(d, self.processor) for d in sets])
        return loader(data, batch_size=batch_size, sampler=sampler, shuffle=False, collate_fn=collator,
                      num_workers=self.num_workers, pin_memory=self.pin_memory,
                      persistent_workers=False, drop_last=False, **kw)
        # not persistent: workers hold copies of the datasets, and a fresh copy per epoch carries set_epoch

    def train_dataloader(self) -> DataLoader:
        if not self.train_sets:
            raise ConfigError("data.train: no training datasets configured")
        trainer = self.trainer  # None outside Lightning
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        self._sampler = MixtureSampler([len(d) for d in self.train_sets], self.ratios, self.samples_per_epoch,
                                       seed=self.seed, on_epoch=self._set_dataset_epoch, num_replicas=world,
                                       rank=rank, batch_size=self.batch_size, progress=self._training_progress,
                                       sample_lengths=self.train_lengths if self.group_by_length else None,
                                       megabatch=self.length_megabatch)
        return self._loader(self.train_sets, self.train_collator, self.batch_size, self._sampler,
                            loader=ResumableLoader, position=self._batches_trained)

    def train_lengths(self, epoch: int) -> np.ndarray:
        """Estimated token length of every training sample at ``epoch``'s prompt phrasing (`estimate_lengths`;
        a function of (seed, epoch), so every rank and a resumed run estimate the same). Kept for the epoch; the
        characters per token are measured once, at epoch 0's phrasing."""
        from regionvlm.data.lengths import chars_per_token, estimate_lengths

        if self._lengths is None or self._lengths[0] != epoch:
            if self._chars_per_token is None:  # at epoch 0's phrasing, whichever epoch a (resumed) run starts in
                self._set_dataset_epoch(0)
                self._chars_per_token = chars_per_token(self.train_collator, ConcatDataset(self.train_sets))
            self._set_dataset_epoch(epoch)
            self._lengths = (epoch, estimate_lengths(self.train_sets, self.train_collator, self.num_workers,
                                                     ratio=self._chars_per_token))
        return self._lengths[1]

    def _training_progress(self) -> tuple[int, float]:
        """(batches trained in the whole run, batches per epoch) from Lightning's restored counters; (0, 0)
        outside a trainer."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        return trainer.fit_loop.epoch_loop.batch_progress.total.processed, trainer.num_training_batches

    def _batches_trained(self) -> int:
        """Batches of the current epoch trained so far (Lightning's progress; 0 outside a trainer)."""
        trainer = self.trainer
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer is not None else 0

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_sets:
            return []
        return self._loader(self.val_sets, self.train_collator, self.val_batch_size)

    def predict_dataloader(self) -> DataLoader:
        """Generation batches (prompt only, left padded) over the validation datasets."""
        return self._loader(self.val_sets, self.predict_collator, self.val_batch_size)

    def generation_batch(self, n: int):
        """The first ``n`` validation samples as one generation batch (for a look at what the model says),
        or None without validation data."""
        if not self.val_sets:
            return None
        data = ConcatDataset([ProcessedDataset(d, self.processor) for d in self.val_sets])
        return self.predict_collator([data[i] for i in range(min(n, len(data)))])

    def trained_prompts(self) -> dict[str, dict]:
        """``{prompt type: node}`` of the training and validation datasets' prompts as they were built (the first
        dataset of a type wins), ``vocabulary: categories`` written out: what the export's card records."""
        prompts: dict[str, dict] = {}
        for d in [*self.train_sets, *self.val_sets]:
            node = d.trained_prompt() if hasattr(d, "trained_prompt") else None
            if node is not None:
                prompts.setdefault(node["type"], node)
        return prompts

    def _set_dataset_epoch(self, epoch: int) -> None:
        for d in self.train_sets:
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)
