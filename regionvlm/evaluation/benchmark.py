"""The `Benchmark` base class: a registered evaluation task.

A benchmark reads its official annotation files, turns them into raw evaluation samples with a fixed
task-guided prompt (a `PROMPTS` node, as training uses, in its evaluation phrasing: `Benchmark.prompt`),
post-processes generated answers and scores prediction rows exactly as the reference implementation does. The
evaluation loop and ``regionvlm score`` share one path::

    bench = load_benchmark("pope", annotations=[...], images="...")   # or BENCHMARKS.build(node)
    for sample in bench.samples():          # raw sample dicts (docs/architecture.md), human turn only
        text = generate(sample)             # the model's raw answer
        rows.append(bench.prediction_row(sample, text))
    results = bench.evaluate(rows)          # validate (ids, fields) + score → {metric: value}
    # or, from a file: bench.score_file(path)  ← what `regionvlm score` calls

Samples: ``{"id": str, "image": path, "regions": Regions, "conversations": [{"from": "human", "value":
"<image>\\n..."}], "target": ..., "task": str}``. `build_samples` writes regions as region dicts (the
conversation-jsonl format: ``{"bbox": [x, y, w, h]}`` or ``{"segmentation": ...}``, image pixels) plus an
optional ``image_size`` (h, w); `samples` turns them into `regionvlm.data.structures.Regions`.
``<regionK>`` refers to ``regions[K-1]``. ``target`` is JSON-serialisable and informational: scoring only
uses the prediction rows and the annotation files, so a file scored later gives the same numbers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from regionvlm.errors import ConfigError, DataError
from regionvlm.evaluation.predictions import Predictions, index_predictions, read_predictions


class Benchmark:
    """Base class of registered benchmarks (subclasses set the class attributes and the four hooks)."""

    name: ClassVar[str] = ""
    task: ClassVar[str] = ""
    id_field: ClassVar[str] = "id"          # the official id the prediction rows' ``id`` holds (docs)
    row_fields: ClassVar[tuple[str, ...]] = ()   # extra fields every prediction row must carry
    default_prompt: ClassVar[dict] = {}   # a PROMPTS node: {type: <name>, **kwargs}
    annotation_files: ClassVar[str] = ""    # human description of ``annotations``, used in errors

    def __init__(self, annotations: str | os.PathLike | Sequence[str | os.PathLike], images: str | None = None,
                 prompt: str | Mapping | None = None, limit: int | None = None):
        files = [annotations] if isinstance(annotations, (str, os.PathLike)) else list(annotations or [])
        self.annotation_paths = [str(f) for f in files]
        self.images = str(images) if images is not None else None
        self.prompt_config = prompt or self.default_prompt
        self.limit = limit
        self.notes: list[str] = []   # one-line remarks produced while scoring (e.g. "SPICE skipped: ...")
        self._check_annotation_count()

    # -- hooks for subclasses ---------------------------------------------------------------------------------
    min_files: ClassVar[int] = 1
    max_files: ClassVar[int | None] = 1

    def load_annotations(self) -> Any:
        """Parse the official files (called once; the result is `annotations`)."""
        raise NotImplementedError

    def build_samples(self) -> list[dict]:
        """All evaluation samples, in a fixed order (before ``limit``)."""
        raise NotImplementedError

    def prompt_runtime(self) -> dict[str, Any]:
        """Values the benchmark gives its prompt at build time (e.g. its category names)."""
        return {}

    def postprocess(self, text: str) -> str:
        """Clean a generated answer before scoring (default: strip whitespace)."""
        return text.strip()

    def score(self, predictions: Mapping[str, dict], annotations: Any = None) -> dict[str, float]:
        """``{metric: value}`` for validated rows keyed by `row_key` (``annotations`` default: `annotations`)."""
        raise NotImplementedError

    # -- shared machinery -------------------------------------------------------------------------------------
    def _check_annotation_count(self) -> None:
        n = len(self.annotation_paths)
        if n < self.min_files or (self.max_files is not None and n > self.max_files):
            want = f"{self.min_files}" if self.max_files == self.min_files else \
                f"{self.min_files}..{self.max_files if self.max_files is not None else 'n'}"
            raise ConfigError(f"{self.name}: annotations: expected {want} file(s) ({self.annotation_files}), got {n}")

    @cached_property
    def annotations(self) -> Any:
        return self.load_annotations()

    @cached_property
    def _samples(self) -> list[dict]:
        from regionvlm.data.structures import Regions

        samples = self.build_samples()
        samples = samples[: self.limit] if self.limit is not None else samples
        for s in samples:   # region dicts (as in the conversation jsonl) → Regions, validated
            if isinstance(s["regions"], list):
                s["regions"] = Regions.from_dicts(s["regions"], s.pop("image_size", None),
                                                  where=f"{self.name} sample {s['id']}: regions")
        return samples

    def samples(self) -> list[dict]:
        """The evaluation samples (first ``limit`` when set)."""
        return self._samples

    def reference_ids(self) -> list[str]:
        """The keys a complete predictions file covers (`row_key` of each sample's row)."""
        return [self.row_key(self.prediction_row(s, "")) for s in self._samples]

    def row_key(self, row: Mapping) -> str:
        """The key a row is indexed by (the official id as a string)."""
        return str(row["id"])

    def prediction_row(self, sample: Mapping, text: str) -> dict:
        """The predictions-file row for a sample and the model's raw answer."""
        return {"id": sample["target"]["id"], "text": text, **self.row_extras(sample)}

    def row_extras(self, sample: Mapping) -> dict:
        """Fields besides ``id``/``text`` that scoring needs (see `row_fields`)."""
        return {}

    def read_rows_by_id(self, required: tuple[str, ...], check=None) -> dict[str, dict]:
        """The first annotation file as JSON lines keyed by their ``id`` (as a string): every row must have the
        ``required`` fields and a unique id; ``check(row, where)`` adds the benchmark's own field checks."""
        from regionvlm.data.formats import read_jsonl

        path = self.annotation_paths[0]
        out: dict[str, dict] = {}
        for i, row in enumerate(read_jsonl(path), 1):
            where = f"{path}: line {i}"
            for k in required:
                if k not in row:
                    raise DataError(f"{where}: missing field '{k}'")
            if check is not None:
                check(row, where)
            if str(row["id"]) in out:
                raise DataError(f"{where}: duplicate id {row['id']!r}")
            out[str(row["id"])] = row
        return out

    def image_path(self, file_name: str) -> str:
        return str(Path(self.images) / file_name) if self.images else file_name

    @cached_property
    def prompt(self) -> Any:
        """The question template, built once. ``prompt:`` is a `PROMPTS` node (``{type: rec, ...}``) or a literal
        string: the default prompt's type with that one phrasing (its fields filled in) and no guidance suffix."""
        from regionvlm.registry import PROMPTS

        node = self.prompt_config
        if isinstance(node, str):
            node = {"type": self.default_prompt["type"], "phrasings": [node], "task_guidance": False}
        return PROMPTS.build(node, key_path="benchmark.prompt", **self.prompt_runtime())

    def human_turn(self, **build_args: Any) -> list[dict]:
        """The human turn in the prompt's evaluation phrasing: ``self.prompt.build(**build_args)``, no rng."""
        try:
            return self.prompt.build(**build_args)[:1]
        except (KeyError, IndexError, TypeError) as e:
            raise ConfigError(f"{self.name}: prompt: does not fit this benchmark, which fills it with "
                              f"{', '.join(build_args) or 'nothing'} ({type(e).__name__}: {e})") from None

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
    """The shipped YAML of a registered benchmark (``benchmarks/<name>.yaml``), if there is one."""
    from regionvlm import benchmarks

    for root in benchmarks.__path__:
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
        cfg = OmegaConf.load(path)
        if "benchmark" not in cfg:
            raise ConfigError(f"{path}: missing top-level key 'benchmark'")
        node = OmegaConf.to_container(cfg.benchmark, resolve=True)
    node.update({k: v for k, v in overrides.items() if v is not None})
    return node


def load_benchmark(name_or_yaml: str, **overrides: Any) -> Benchmark:
    """Build a benchmark from its YAML (or a registered name) plus overrides, e.g. ``annotations=[...]``."""
    from regionvlm.registry import BENCHMARKS

    node = benchmark_config(name_or_yaml, **overrides)
    return BENCHMARKS.build(node, key_path="benchmark")


def require_int_list(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise DataError(f"{where}: expected a list of integer ids, got {value!r}")
    return value
