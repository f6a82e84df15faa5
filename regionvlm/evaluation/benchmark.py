"""The `Benchmark` base class: a registered evaluation task = a dataset node + its prompt + its scorer.

A benchmark builds its evaluation samples with the registered datasets training uses (`regionvlm.data.datasets`,
``train: false``: the prompt's first phrasing, no rng), so what is evaluated is exactly what could be trained
on; it adds the scorer: answer post-processing and metrics computed as the reference implementation does. The
evaluation loop and ``regionvlm score`` share one path::

    bench = load_benchmark("pope", annotations=[...], images="...")   # or BENCHMARKS.build(node)
    for sample in bench.samples():          # the datasets' samples (docs/architecture.md), first ``limit``
        text = generate(sample)             # the model's raw answer (generation drops the answer turn)
        rows.append(bench.prediction_row(sample, text))
    results = bench.evaluate(rows)          # validate (ids, fields) + score → {metric: value}
    # or, from a file: bench.score_file(path)  ← what `regionvlm score` calls

A subclass says which datasets read its ``annotations`` (`dataset_nodes`), which ``target`` field holds the
official id the prediction rows carry (`id_key`), what truth scoring needs from the datasets
(`load_annotations`) and how to score (`postprocess`, `score`). Scoring only uses the prediction rows and the
annotation files, so a file scored later gives the same numbers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from regionvlm.errors import ConfigError, DataError
from regionvlm.evaluation.predictions import Predictions, index_predictions, read_predictions


class Benchmark:
    """Base class of registered benchmarks (subclasses set the class attributes and the hooks)."""

    name: ClassVar[str] = ""
    id_key: ClassVar[str] = "id"            # the sample ``target`` field holding the official id of a row
    row_fields: ClassVar[tuple[str, ...]] = ()   # extra fields every prediction row must carry
    default_prompt: ClassVar[dict] = {}   # a PROMPTS node: {type: <name>, **kwargs}
    annotation_files: ClassVar[str] = ""    # human description of ``annotations``, used in errors
    min_files: ClassVar[int] = 1
    max_files: ClassVar[int | None] = 1

    def __init__(self, annotations: str | os.PathLike | Sequence[str | os.PathLike], images: str | None = None,
                 prompt: str | Mapping | None = None, limit: int | None = None):
        files = [annotations] if isinstance(annotations, (str, os.PathLike)) else list(annotations or [])
        self.annotation_paths = [str(f) for f in files]
        self.images = str(images) if images is not None else None
        self.prompt_config = prompt or self.default_prompt
        self.limit = limit
        self.generation: dict[str, Any] = {}   # generation settings the protocol fixes (e.g. max_new_tokens)
        self.notes: list[str] = []   # one-line remarks produced while scoring (e.g. "SPICE skipped: ...")
        self._check_annotation_count()

    # -- hooks for subclasses ---------------------------------------------------------------------------------
    def dataset_nodes(self) -> list[dict]:
        """The `DATASETS` nodes that read ``annotation_paths`` (``image_root``, ``prompt`` and ``train: false``
        are added); their samples, concatenated, are the benchmark's."""
        raise NotImplementedError

    def load_annotations(self) -> Any:
        """The truth scoring needs, taken from `datasets` (called once; the result is `annotations`)."""
        raise NotImplementedError

    def postprocess(self, text: str) -> str:
        """Clean a generated answer before scoring (default: strip whitespace)."""
        return text.strip()

    def score(self, predictions: Mapping[str, dict], annotations: Any = None) -> dict[str, float]:
        """``{metric: value}`` for validated rows keyed by `row_key` (``annotations`` default: `annotations`)."""
        raise NotImplementedError

    def row_extras(self, sample: Mapping) -> dict:
        """Fields besides ``id``/``text`` that scoring needs (see `row_fields`)."""
        return {}

    # -- samples ----------------------------------------------------------------------------------------------
    def _check_annotation_count(self) -> None:
        n = len(self.annotation_paths)
        if n < self.min_files or (self.max_files is not None and n > self.max_files):
            want = f"{self.min_files}" if self.max_files == self.min_files else \
                f"{self.min_files}..{self.max_files if self.max_files is not None else 'n'}"
            raise ConfigError(f"{self.name}: annotations: expected {want} file(s) ({self.annotation_files}), got {n}")

    @property
    def prompt_node(self) -> dict | None:
        """``prompt:`` as a `PROMPTS` node: a node as given, or a literal string as the default prompt's type
        with that one phrasing (its fields filled in) and no guidance suffix; None: the dataset's default."""
        node = self.prompt_config
        if isinstance(node, str):
            return {"type": self.default_prompt["type"], "phrasings": [node], "task_guidance": False}
        return dict(node) if node else None

    @contextmanager
    def _named(self) -> Iterator[None]:
        """Config errors raised by the datasets (an unknown prompt type, a prompt that does not fit) name the
        benchmark they came from."""
        try:
            yield
        except ConfigError as e:
            raise type(e)(f"{self.name}: {e}") from None

    @cached_property
    def datasets(self) -> list:
        """The registered datasets behind the benchmark, in evaluation mode."""
        from regionvlm.registry import DATASETS

        common = {"image_root": self.images, "train": False}
        if self.prompt_node is not None:
            common["prompt"] = self.prompt_node
        with self._named():
            return [DATASETS.build({**node, **common}, key_path=f"{self.name}.dataset")
                    for node in self.dataset_nodes()]

    @cached_property
    def annotations(self) -> Any:
        return self.load_annotations()

    @cached_property
    def _samples(self) -> list[dict]:
        samples: list[dict] = []
        with self._named():
            for ds in self.datasets:
                for i in range(len(ds)):
                    if self.limit is not None and len(samples) >= self.limit:
                        return samples
                    samples.append(ds[i])
        return samples

    def samples(self) -> list[dict]:
        """The evaluation samples (first ``limit`` when set): the datasets' eval-mode samples, unchanged."""
        return self._samples

    # -- prediction rows --------------------------------------------------------------------------------------
    def official_id(self, sample: Mapping) -> Any:
        value = (sample.get("target") or {}).get(self.id_key)
        if value is None:
            raise DataError(f"{self.name}: sample {sample['id']}: no official id ({self.id_key}) in its target")
        return value

    def reference_ids(self) -> list[str]:
        """The keys a complete predictions file covers (`row_key` of each sample's row)."""
        return [self.row_key(self.prediction_row(s, "")) for s in self._samples]

    def row_key(self, row: Mapping) -> str:
        """The key a row is indexed by (the official id as a string)."""
        return str(row["id"])

    def prediction_row(self, sample: Mapping, text: str) -> dict:
        """The predictions-file row for a sample and the model's raw answer."""
        return {"id": self.official_id(sample), "text": text, **self.row_extras(sample)}

    # -- validation + scoring ---------------------------------------------------------------------------------
    def check(self, rows: Iterable[tuple[int, Any]], source: str, allow_partial: bool = False) -> Predictions:
        return index_predictions(rows, self.reference_ids(), source=source, required=self.row_fields,
                                 key=self.row_key, allow_partial=allow_partial)

    def _results(self, preds: Predictions, allow_partial: bool) -> dict[str, float]:
        self.notes = []
        results = dict(self.score(preds.rows))
        results["num_samples"] = len(preds.rows)
        if allow_partial:
            results["coverage"] = 100.0 * preds.coverage
            if preds.coverage < 1:
                self.notes.append(f"partial coverage: {len(preds.rows)} of {preds.expected} samples scored")
        return results

    def evaluate(self, rows: Sequence[Mapping], allow_partial: bool = False,
                 source: str = "<predictions>") -> dict[str, float]:
        """Validate in-memory rows (the evaluation loop's output) and score them."""
        preds = self.check(enumerate(rows, 1), source=source, allow_partial=allow_partial)
        return self._results(preds, allow_partial)

    def score_file(self, path: str | os.PathLike, allow_partial: bool = False) -> dict[str, float]:
        """Read, validate and score a predictions file (what ``regionvlm score`` runs)."""
        preds = read_predictions(path, self.reference_ids(), required=self.row_fields, key=self.row_key,
                                 allow_partial=allow_partial)
        return self._results(preds, allow_partial)


# -- finding benchmarks -----------------------------------------------------------------------------------------
def benchmark_yaml(name: str) -> Path | None:
    """The shipped YAML of a registered benchmark (``benchmarks/<name>.yaml``), if there is one. The package's
    folder is found without importing it (the benchmarks import this module)."""
    from importlib.util import find_spec

    spec = find_spec("regionvlm.benchmarks")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        p = Path(root) / f"{name}.yaml"
        if p.exists():
            return p
    return None


def benchmark_config(name_or_yaml: str, **overrides: Any) -> dict:
    """The ``benchmark:`` node of a benchmark YAML (a registered name or a path), resolved, with
    ``overrides`` (None values ignored) applied on top."""
    from omegaconf import OmegaConf

    from regionvlm.registry import BENCHMARKS

    if name_or_yaml.endswith((".yaml", ".yml")):
        path: Path | None = Path(name_or_yaml)
        if not path.exists():
            raise ConfigError(f"{name_or_yaml}: file not found")
    else:
        BENCHMARKS.get(name_or_yaml)   # loud error for unknown names
        path = benchmark_yaml(name_or_yaml)
    node: dict = {"type": name_or_yaml}
    if path is not None:
        from regionvlm.config import load_yaml

        cfg = OmegaConf.create(load_yaml(Path(path).read_text(), str(path)) or {})  # strictly: it may be a user's
        if "benchmark" not in cfg:
            raise ConfigError(f"{path}: missing top-level key 'benchmark'")
        node = OmegaConf.to_container(cfg.benchmark, resolve=True)
    node.update({k: v for k, v in overrides.items() if v is not None})
    return node


def load_benchmark(name_or_yaml: str, key_path: str = "benchmark", **overrides: Any) -> Benchmark:
    """Build a benchmark from its YAML (or a registered name) plus overrides, e.g. ``annotations=[...]``; errors
    name ``key_path`` (``eval.benchmarks.coco_cls`` from ``regionvlm eval``)."""
    from regionvlm.registry import BENCHMARKS

    node = benchmark_config(name_or_yaml, **overrides)
    return BENCHMARKS.build(node, key_path=key_path)


def require_int_list(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise DataError(f"{where}: expected a list of integer ids, got {value!r}")
    return value
