"""Judge caches: every exchange with a judge (prompt, reply, judge model) kept on disk as it is made, so a judged
score can be checked and re-scored without the judge, and a killed scoring run resumes where it stopped.

A judged benchmark (``dlc``, ``spatial``) turns each scored item into a `Job`: its key (the row id), the
prediction it judges and the prompts it sends. `judge_jobs` answers every prompt the cache already holds from
the cache, asks the judge only for the others, in chunks (about the judge's ``batch_size`` prompts, never
splitting an item), and after each chunk records the new replies and rewrites the cache file atomically
(temp file + rename): a kill loses at most the chunk in flight, whose replies had not come back yet.

A cache is refused, with one line naming the file (exit 2), when it was made by another judge model or with
another system message (both recorded in the file), when an item's cached prediction is not the one being
scored (the cache belongs to another predictions file), or when a cached prompt differs from the one the
benchmark builds now (another judge prompt). With no judge configured, a cache that answers every prompt scores
alone; one that does not is an error saying how many prompts lack a reply.

Two layouts, one per benchmark:

- `DamEvalCache` (``dlc``) is DAM's own ``<pred>_eval.json``, as ``evaluation/eval_model_outputs.py`` reads and
  writes it: ``{region key: {"pred", "details_positives", "details_negatives", "details_recognition", "prompt":
  [...], "response": [...], "score", "score_pos", "score_neg", "neg_valid_num", "recognition_result"}, ...,
  "avg_pos", "avg_neg"}``. regionvlm adds the top-level string ``"judge_model"`` (and ``"judge_system"`` when the
  judge has one), which DAM's script carries along untouched. A DAM-written cache records no model: it is taken
  to be the configured judge's.
- `RegionvlmJudgeCache` (``spatial``, and any other judged benchmark): ``{"format": "regionvlm.judge_cache",
  "version": 1, "benchmark", "judge_model", "judge_system", "entries": {key: {"pred", "prompt": [...],
  "response": [...]}}}``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from regionvlm.errors import ConfigError, DataError, UserError

FORMAT = "regionvlm.judge_cache"
VERSION = 1


@dataclass
class Job:
    """One scored item: its key, the prediction the judge reads (the text recorded as ``pred``) and its prompts."""

    key: str
    pred: str
    prompts: list[str]


def judge_name(judge: Any) -> str | None:
    """The judge model a cache records: a judge's ``name`` (``openai_judge``: its ``model``; ``hf_judge``: its
    ``pretrained``, with ``gguf_file``), else the callable's qualified name; None for no judge."""
    if judge is None:
        return None
    name = getattr(judge, "name", None)
    if isinstance(name, str) and name:
        return name
    return getattr(judge, "__qualname__", None) or type(judge).__qualname__


def judge_system(judge: Any) -> str | None:
    """The system message a judge sends before each prompt (part of what the judge saw), if any."""
    system = getattr(judge, "system", None)
    return system if isinstance(system, str) and system else None


def default_cache_path(predictions: str | os.PathLike, suffix: str) -> Path:
    """The cache beside a predictions file: DAM's naming, ``<predictions without extension><suffix>``
    (``dam_3b_v1.json`` → ``dam_3b_v1_eval.json``)."""
    p = Path(predictions)
    return p.with_name(p.stem + suffix)


class JudgeCache:
    """Base of the cache layouts: entries by key holding ``pred``, ``prompt`` (list) and ``response`` (list)."""

    layout: ClassVar[str] = ""

    def __init__(self, path: str | os.PathLike, benchmark: str = ""):
        self.path, self.benchmark = Path(path), benchmark
        self.data: dict[str, Any] = self._load() if self.path.exists() else self._empty()
        self.dirty = False
        self.answered = self.asked = 0   # prompts answered from the file / asked of the judge in this run

    # -- layout hooks ---------------------------------------------------------------------------------------------
    def _empty(self) -> dict[str, Any]:
        raise NotImplementedError

    def _check_layout(self, data: dict) -> None:
        """A `DataError` when ``data`` is not this layout."""

    def _entries(self, data: dict) -> dict[str, dict]:
        raise NotImplementedError

    def entries(self) -> dict[str, dict]:
        """The cached items by key."""
        return self._entries(self.data)

    def put(self, key: str, entry: dict) -> None:
        raise NotImplementedError

    # -- reading --------------------------------------------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        from regionvlm.data.formats import read_json

        if not self.path.is_file():
            raise DataError(f"{self.path}: judge cache: not a regular file")
        data = read_json(self.path)
        if not isinstance(data, dict):
            raise DataError(f"{self.path}: judge cache: expected a JSON object, got {type(data).__name__}")
        self._check_layout(data)
        for key, entry in self._entries(data).items():
            where = f"{self.path}: {key}"
            if not isinstance(entry.get("pred"), str):
                raise DataError(f"{where}.pred: expected the judged prediction text")
            for field in ("prompt", "response"):
                value = entry.get(field)
                if not isinstance(value, list) or not all(v is None or isinstance(v, str) for v in value):
                    raise DataError(f"{where}.{field}: expected a list of strings")
        return data

    @property
    def judge_model(self) -> str | None:
        value = self.data.get("judge_model")
        return value if isinstance(value, str) else None

    def check_judge(self, judge: Any) -> None:
        """Refuse a cache that names another judge model or system message than ``judge`` (None: any)."""
        if judge is None:
            return
        for field, ours in (("judge_model", judge_name(judge)), ("judge_system", judge_system(judge))):
            theirs = self.data.get(field)
            if theirs is not None and theirs != ours:
                raise UserError(f"{self.path}: {field}: made with {theirs!r}, this run's judge has {ours!r}; give "
                                f"another --judge-cache (or the judge that made it)")

    def cached(self, job: Job) -> list[str | None]:
        """The cached reply to each of ``job``'s prompts (None: not cached); a cache made for another prediction or
        with another prompt is refused."""
        entry = self.entries().get(job.key)
        if entry is None:
            return [None] * len(job.prompts)
        if entry["pred"] != job.pred:
            raise UserError(f"{self.path}: {job.key}.pred: judged for another prediction than this file's "
                            f"({_preview(entry['pred'])} vs {_preview(job.pred)}); the cache belongs to other "
                            f"predictions: give another --judge-cache")
        prompts, responses = entry["prompt"], entry["response"]
        for i, (theirs, ours) in enumerate(zip(prompts, job.prompts)):
            if theirs != ours:
                raise UserError(f"{self.path}: {job.key}.prompt[{i}]: differs from the prompt this benchmark sends "
                                f"(a cache made with another judge prompt); give another --judge-cache")
        if len(prompts) > len(job.prompts):
            raise UserError(f"{self.path}: {job.key}.prompt: {len(prompts)} prompts, this benchmark sends "
                            f"{len(job.prompts)} (another question file or judge prompt)")
        return [responses[i] if i < len(prompts) and i < len(responses) else None for i in range(len(job.prompts))]

    # -- writing --------------------------------------------------------------------------------------------------
    def record(self, job: Job, replies: Sequence[str], entry: Mapping | None = None) -> None:
        """Keep ``job``'s replies (``entry``: the layout's full record, built by the benchmark)."""
        self.put(job.key, dict(entry) if entry is not None else
                 {"pred": job.pred, "prompt": list(job.prompts), "response": list(replies)})
        self.dirty = True

    def stamp(self, judge: Any) -> None:
        """Record the judge model (and system message) of the replies added."""
        if judge is None:
            return
        self.data["judge_model"] = judge_name(judge)
        if judge_system(judge) is not None:
            self.data["judge_system"] = judge_system(judge)

    def save(self) -> None:
        from regionvlm.data.formats import write_json

        write_json(self.path, self.data, indent=4)
        self.dirty = False

    def note(self) -> str:
        model = self.judge_model or "no judge model recorded"
        return (f"judge cache {self.path} ({model}): {self.answered} prompts answered from it, {self.asked} asked "
                f"of the judge")


def _preview(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[:n] + "…")


class DamEvalCache(JudgeCache):
    """DAM's ``<pred>_eval.json``: region keys at the top level beside ``avg_pos``/``avg_neg`` (numbers) and our
    ``judge_model`` (a string); only object-valued entries are regions."""

    layout = "dam"

    def _empty(self) -> dict[str, Any]:
        return {}

    def _entries(self, data: dict) -> dict[str, dict]:
        return {k: v for k, v in data.items() if isinstance(v, dict)}

    def put(self, key: str, entry: dict) -> None:
        self.data.pop(key, None)   # DAM's order: a rewritten key goes last, as its script's dict update leaves it
        self.data[key] = entry

    def save(self) -> None:
        """Regions first, in their order, then the file's other keys (``judge_model``, ``avg_pos``, ...), as DAM's
        file reads: its records, then its averages."""
        regions = self.entries()
        self.data = {**regions, **{k: v for k, v in self.data.items() if k not in regions}}
        super().save()

    def set_averages(self, avg_pos: float | None, avg_neg: float | None, keys: Sequence[str]) -> None:
        """DAM's ``avg_pos``/``avg_neg`` (fractions), written only when ``keys`` are all of the file's regions
        (otherwise they would describe a different set and are dropped)."""
        for name in ("avg_pos", "avg_neg", "avg"):
            self.data.pop(name, None)
        if set(keys) == set(self.entries()):
            self.data["avg_pos"], self.data["avg_neg"] = avg_pos, avg_neg
        self.dirty = True


class RegionvlmJudgeCache(JudgeCache):
    """regionvlm's layout: a header and ``entries``."""

    layout = "regionvlm"

    def _empty(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "benchmark": self.benchmark, "judge_model": None,
                "entries": {}}

    def _check_layout(self, data: dict) -> None:
        if data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
            raise DataError(f"{self.path}: not a regionvlm judge cache (expected \"format\": \"{FORMAT}\" and "
                            f"\"entries\")")
        if data.get("version") != VERSION:
            raise DataError(f"{self.path}: version: {data.get('version')!r}, this regionvlm reads {VERSION}")
        if data.get("benchmark") not in (None, "", self.benchmark):
            raise UserError(f"{self.path}: benchmark: a cache of {data['benchmark']!r}, not of {self.benchmark!r}")
        for key, entry in data["entries"].items():
            if not isinstance(entry, dict):
                raise DataError(f"{self.path}: entries.{key}: expected an object")

    def _entries(self, data: dict) -> dict[str, dict]:
        return data["entries"]

    def put(self, key: str, entry: dict) -> None:
        self.data["entries"][key] = entry


def judge_jobs(judge: Any, jobs: Sequence[Job], cache: JudgeCache | None = None,
               entry: Callable[[Job, list[str]], Mapping] | None = None,
               chunk_prompts: int | None = None) -> dict[str, list[str]]:
    """Every job's replies, ``{key: [reply per prompt]}``: from ``cache`` where it has them, the rest from
    ``judge`` in chunks, each chunk recorded in the cache (``entry`` builds the layout's record) and the file
    rewritten before the next is asked (see the module docstring)."""
    if cache is not None:
        cache.check_judge(judge)
    out: dict[str, list[str]] = {}
    todo: list[tuple[Job, list[str | None]]] = []
    for job in jobs:
        got = cache.cached(job) if cache is not None else [None] * len(job.prompts)
        if cache is not None:
            cache.answered += sum(r is not None for r in got)
        if all(r is not None for r in got):
            out[job.key] = list(got)   # type: ignore[arg-type]
        else:
            todo.append((job, got))
    if todo and judge is None:
        missing = sum(r is None for _, got in todo for r in got)
        total = sum(len(j.prompts) for j in jobs)
        where = f"{cache.path} answers {total - missing} of {total} judge prompts" if cache is not None else \
            f"{total} judge prompts and no cache"
        raise ConfigError(f"{where}; the other {missing} need a judge (benchmark.judge, e.g. -o judge={{type: "
                          f"openai_judge, model: ..., base_url: ...}})")
    size = max(1, int(chunk_prompts or getattr(judge, "batch_size", 1) or 1))
    chunk: list[tuple[Job, list[str | None]]] = []

    def ask() -> None:
        prompts = [p for job, got in chunk for p, r in zip(job.prompts, got) if r is None]
        replies = list(judge(prompts))
        if len(replies) != len(prompts) or not all(isinstance(r, str) for r in replies):
            raise UserError(f"judge {judge_name(judge)!r}: {len(replies)} replies for {len(prompts)} prompts "
                            f"(a judge returns one string per prompt)")
        it = iter(replies)
        for job, got in chunk:
            full = [r if r is not None else next(it) for r in got]
            out[job.key] = full
            if cache is not None:
                cache.record(job, full, entry(job, full) if entry is not None else None)
        if cache is not None:
            cache.asked += len(prompts)
            cache.stamp(judge)
            cache.save()
        chunk.clear()

    pending = 0
    for item in todo:
        chunk.append(item)
        pending += sum(r is None for r in item[1])
        if pending >= size:
            ask()
            pending = 0
    if chunk:
        ask()
    return out
