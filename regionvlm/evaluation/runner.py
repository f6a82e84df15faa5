"""The evaluation loop behind ``regionvlm eval``: benchmarks' samples → batched generation through Lightning's
predict loop (every device the Trainer is given) → prediction rows gathered from all processes → scores,
computed on rank 0 and broadcast to the other ranks (the Trainer's strategy; a no-op with one process).

Per benchmark it writes ``<out_dir>/<name>/predictions.jsonl`` (rows that `regionvlm score` reads; written before
scoring, so a run killed while a judge scores resumes from them), for a judged benchmark with a judge its judge
cache beside them (``predictions_eval.json`` for DLC-Bench, DAM's name; ``predictions_judge.json`` otherwise), and
for the run ``results.json`` ({benchmark: {metric: value}}, strict JSON: a metric over nothing is null) and
``results.md`` (one table).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from regionvlm.errors import ConfigError, UserError
from regionvlm.io import dumps_json, write_text


def eval_settings(benchmarks: dict, batch_size: int = 8, num_workers: int = 0, out_dir: str | None = None,
                  gallery: int = 4) -> dict:
    """The ``eval:`` section's schema (what ``regionvlm eval`` and its dry run check): ``benchmarks`` ({name:
    node}), ``batch_size``, ``num_workers``, ``out_dir`` (default: the run directory's ``eval/``), ``gallery``
    (examples drawn per benchmark)."""
    return {"benchmarks": benchmarks, "batch_size": batch_size, "num_workers": num_workers, "out_dir": out_dir,
            "gallery": gallery}


class SampleDataset:
    """A benchmark's samples (raw, `Regions` included), processed (image decode, masks) in DataLoader workers."""

    def __init__(self, samples: list[dict], processor: Any):
        self.samples, self.processor = samples, processor

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        sample = dict(self.samples[i])
        if sample.get("crop") is not None:   # a benchmark's crop (coco_cls crop: square), done here in workers
            from regionvlm.data.processing import load_image

            x0, y0, x1, y1 = (int(v) for v in sample.pop("crop"))
            image = load_image(sample["image"], where=f"sample {sample.get('id', '?')}")
            sample["regions"] = sample["regions"].with_image_size(image.height, image.width).crop(x0, y0, x1, y1)
            sample["image"] = image.crop((x0, y0, x1, y1))
        return self.processor.process_sample(sample)


def generate_rows(module: Any, trainer: Any, samples: list[dict], batch_size: int, num_workers: int,
                  generation: dict | None = None, chat: Any = None) -> list[dict]:
    """``[{"id": sample id, "text": answer}]`` for every sample, from every process, in sample order;
    ``generation`` overrides the module's generation settings for these samples (a benchmark's protocol).
    ``chat``: a `RegionChat` whose engine generates instead of Lightning's predict loop (``--engine vllm``: the
    images are processed in the loader's workers, each batch's requests go to vLLM together)."""
    from torch.utils.data import DataLoader

    if chat is not None:
        settings = {**module.generation, **(generation or {})}
        loader = DataLoader(SampleDataset(samples, chat.processor), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, collate_fn=list)
        return [{"id": s["id"], "text": text} for batch in loader
                for s, text in zip(batch, chat.generate(batch, **settings))]

    from regionvlm.card import as_model_card
    from regionvlm.evaluation.collectors import PredictionCollector
    from regionvlm.processor import RegionProcessor

    card = as_model_card(module.config, module.model, module.tokenizer)  # a checkpoint's config → its card
    processor = RegionProcessor.from_card(card, module.tokenizer, module.model)
    loader = DataLoader(SampleDataset(samples, processor), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=processor.collator(for_generation=True))
    module.collector = PredictionCollector()
    saved = module.generation
    module.generation = {**saved, **(generation or {})}
    try:
        trainer.predict(module, dataloaders=loader, return_predictions=False)
    finally:
        module.generation = saved
    rows = module.collector.compute()
    module.collector = None
    order = {s["id"]: i for i, s in enumerate(samples)}
    return sorted(rows, key=lambda r: order.get(r["id"], len(order)))


def score_on_rank_zero(trainer: Any, score: Callable[[], dict[str, float]]) -> dict[str, float]:
    """``score()`` run on rank 0 only and its result broadcast through the Trainer's strategy (every rank holds
    every row after gathering, so judges and metric models run once). A `UserError` on rank 0 (a bad row) is
    broadcast too and raised on every rank, so the others do not wait for a result that will never come."""
    result, error = None, None
    if trainer.is_global_zero:
        try:
            result = score()
        except UserError as e:
            error = e
    result, error = trainer.strategy.broadcast((result, error), src=0)
    if error is not None:
        raise error
    return result


def finished_rows(path: Path, expected_ids: list[str]) -> list[dict] | None:
    """The rows of a benchmark's ``predictions.jsonl`` from an earlier run of the same evaluation, when it holds
    exactly the expected ids in order (it is written whole, atomically: present means complete); else None."""
    from regionvlm.data.formats import read_jsonl

    if not path.is_file():
        return None
    rows = read_jsonl(path)
    return rows if [str(r.get("id")) for r in rows] == expected_ids else None


def use_judge_cache(bench: Any, predictions: Path, fresh: bool, write: bool = True) -> None:
    """A judged benchmark with a judge (and no cache of its own) keeps its judge cache beside its predictions; a
    cache left there by an earlier evaluation whose predictions were not reused (``fresh``) is removed first."""
    from regionvlm.evaluation.judge_cache import default_cache_path

    suffix = getattr(bench, "judge_cache_suffix", None)
    if suffix is None or getattr(bench, "judge_cache", None) is not None or getattr(bench, "judge_node", None) is None:
        return
    path = default_cache_path(predictions, suffix)
    if fresh and write:
        path.unlink(missing_ok=True)
    bench.judge_cache = str(path)


def evaluate(module: Any, trainer: Any, benchmarks: dict[str, dict], out_dir: str | Path,
             batch_size: int = 8, num_workers: int = 0, gallery: int = 0,
             resume: bool = False, chat: Any = None) -> dict[str, dict[str, float]]:
    """Run every benchmark in ``benchmarks`` (``{name: node}``, node = the benchmark's YAML overrides such as
    ``annotations``, ``images``, ``limit``); write predictions and results under ``out_dir``. With ``resume``, a
    benchmark whose predictions a killed run of the same evaluation already wrote is scored from them, not
    generated again (each benchmark's file is whole or absent, so no row is lost or duplicated)."""
    from regionvlm.evaluation.benchmark import load_benchmark
    from regionvlm.evaluation.reports import results_table, write_gallery

    if not benchmarks:
        raise ConfigError("eval.benchmarks: nothing to evaluate (give {name: {annotations: ..., images: ...}})")
    out_dir = Path(out_dir)
    results: dict[str, dict[str, float]] = {}
    for name, node in benchmarks.items():
        node = dict(node or {})
        bench = load_benchmark(node.pop("config", name), key_path=f"eval.benchmarks.{name}", **node)
        samples = bench.samples()
        by_id = {s["id"]: s for s in samples}
        bench_dir = out_dir / name
        done = finished_rows(bench_dir / "predictions.jsonl",
                             [str(bench.prediction_row(s, "")["id"]) for s in samples]) if resume else None
        if done is not None:
            print(f"{name}: predictions of the earlier run reused ({len(done)} rows)")
            prediction_rows, rows = done, [{"id": s["id"], "text": r["text"]} for s, r in zip(samples, done)]
        else:
            rows = generate_rows(module, trainer, samples, batch_size, num_workers, generation=bench.generation,
                                 chat=chat)
            prediction_rows = [bench.prediction_row(by_id[r["id"]], r["text"]) for r in rows]
            if trainer.is_global_zero:
                write_text(bench_dir / "predictions.jsonl", "".join(dumps_json(r) + "\n" for r in prediction_rows))
        use_judge_cache(bench, bench_dir / "predictions.jsonl", fresh=done is None,
                        write=trainer.is_global_zero)
        results[name] = score_on_rank_zero(
            trainer, partial(bench.evaluate, prediction_rows, source=f"{name} predictions"))
        if trainer.is_global_zero and done is None:
            if gallery:
                write_gallery(bench_dir / "gallery.png", [by_id[r["id"]] for r in rows[:gallery]],
                              [r["text"] for r in rows[:gallery]], title=name)
            for note in bench.notes:
                print(f"{name}: {note}")
    if trainer.is_global_zero:
        write_text(out_dir / "results.json", dumps_json(results, indent=2) + "\n")
        write_text(out_dir / "results.md", results_table(results) + "\n")
    return results
