"""One cell of an ablation: train and evaluate through `regionvlm train` / `regionvlm eval`, then its metrics
(the benchmarks' results plus accuracy on region subsets) written to ``result.json``, last and atomically."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from regionvlm.ablation.spec import Cell, Spec, cell_dir, cell_finished, cell_overrides, cell_train_config
from regionvlm.errors import ConfigError, DataError
from regionvlm.io import write_text


def run_cell(spec: Spec, cell: Cell) -> str:
    """Train and evaluate one cell unless it has finished; returns "skipped", "resumed" or "ran"."""
    from regionvlm.cli import command_parser

    def run_command(name: str, argv: list[str]) -> None:  # through the command's own parser: its defaults hold
        parser, module = command_parser(name)
        code = module.run(parser.parse_args(argv))
        if code:  # e.g. 143: training stopped by SIGTERM (its checkpoint saved); the cell is not finished
            raise SystemExit(code)

    if cell_finished(spec, cell):
        return "skipped"
    out = cell_dir(spec, cell)
    train_overrides, eval_overrides = cell_overrides(spec, cell)
    export = out / "export"  # published atomically by train: present = training finished
    if export.is_dir():
        status = "resumed"
    else:
        resume = "last" if (out / "checkpoints" / "last.ckpt").is_file() else None
        status = "resumed" if resume else "ran"
        run_command("train", [str(cell_train_config(spec, cell)), *train_overrides,
                              *(["--resume", resume] if resume else ["--overwrite"])])
    if not (out / "eval" / "results.json").is_file():  # else a killed rerun finished evaluating already
        run_command("eval", [str(spec.eval), *eval_overrides, "--model", str(export)])  # resumes a killed eval
    metrics = read_cell_metrics(spec, cell)
    write_text(out / "result.json", json.dumps({"variant": cell.variant, "seed": cell.seed, "metrics": metrics},
                                               indent=2) + "\n")
    return status


def run_cells_parallel(spec: Spec, cells: list[Cell], jobs: int) -> int:
    """Run ``cells`` ``jobs`` at a time, each in its own ``regionvlm ablate --cell`` process with an even share
    of the CPU threads (one torch process per core beats two fighting over both). A cell's output goes to
    ``<output>/logs/<cell>.log``. After a failure no new cell starts; running ones finish. SIGTERM to this
    process is passed on to the cells (training saves its ``last.ckpt``; a rerun resumes). Returns the first
    failing exit code, else 0."""
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    logs = spec.output / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    failed: list[int] = []
    running: dict[Cell, subprocess.Popen] = {}
    lock = threading.Lock()  # a cell is either started and in `running`, or never started once `failed`

    def one(cell: Cell) -> None:
        log = logs / f"{cell.name}.log"
        start = time.monotonic()
        with lock:
            if failed:
                return
            with open(log, "w") as f:
                running[cell] = subprocess.Popen(
                    [sys.executable, "-m", "regionvlm", "ablate", str(spec.path), "--cell", str(cell.index),
                     "--out", str(spec.output)], stdout=f, stderr=subprocess.STDOUT, env=env)
        rc = running[cell].wait()
        took = time.monotonic() - start
        if rc:
            failed.append(rc if rc > 0 else 128 - rc)  # -N: killed by signal N, as a shell reports it
            last = [line for line in log.read_text().splitlines() if line.strip()][-1:] or ["(no output)"]
            print(f"[ablate] cell {cell.index} {cell.name}: failed (exit {failed[-1]}, {took:.0f} s): {last[0]}; "
                  f"log: {log}", flush=True)
            return
        status = [line.rsplit(": ", 1)[-1] for line in log.read_text().splitlines()
                  if line.startswith(f"[ablate] cell {cell.index} {cell.name}: ")][-1:] or ["done"]
        print(f"[ablate] cell {cell.index} {cell.name}: {status[0]} ({took:.0f} s, OMP_NUM_THREADS={threads}; "
              f"log: {log})", flush=True)

    def pass_on(signum: int, frame: Any) -> None:
        failed.append(128 + signum)  # no new cell starts
        for proc in list(running.values()):
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, pass_on)
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            try:
                list(pool.map(one, cells))
            except KeyboardInterrupt:  # the running cells got the same Ctrl-C; start no other
                failed.append(130)
                raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return failed[0] if failed else 0


def read_cell_metrics(spec: Spec, cell: Cell) -> dict[str, float]:
    """``{benchmark.metric: value}`` from the cell's ``results.json``, plus the split accuracies."""
    from omegaconf import OmegaConf

    from regionvlm.config import load_config

    eval_dir = cell_dir(spec, cell) / "eval"
    results = json.loads((eval_dir / "results.json").read_text())
    metrics = {f"{b}.{m}": float(v) for b, ms in results.items() for m, v in ms.items()
               if isinstance(v, (int, float)) and m != "num_samples"}
    if spec.splits:
        _, eval_overrides = cell_overrides(spec, cell)
        cfg = OmegaConf.to_container(load_config(spec.eval, eval_overrides), resolve=True)
        for bench, split in spec.splits.items():
            node = (cfg.get("eval") or {}).get("benchmarks", {}).get(bench)
            if node is None:
                raise ConfigError(f"{spec.path} splits.{bench}: not a benchmark of {spec.eval}'s eval section")
            for key, value in split_accuracies(bench, node, eval_dir / bench / "predictions.jsonl", **split).items():
                metrics[f"{bench}.{key}"] = value
    return metrics


# -- region subsets -----------------------------------------------------------------------------------------------
def region_subsets(coco: Any, ann_ids: list[int], patch_size: float, image_size: float,
                   overlap: float) -> dict[str, set[int]]:
    """``{"small": ids, "overlap": ids}`` among ``ann_ids`` of a COCO-instances index (see the module doc)."""
    import numpy as np

    small, overlapping = set(), set()
    masks: dict[int, Any] = {}
    for i in ann_ids:
        ann = coco.anns[i]
        img = coco.images[ann["image_id"]]
        scale = image_size / max(img["width"], img["height"])  # pad to square, then resize
        if ann["area"] * scale * scale < patch_size * patch_size:
            small.add(i)
        others = [o for o in coco.anns_by_image[ann["image_id"]] if o["id"] != i]
        x, y, w, h = (int(round(v)) for v in ann["bbox"])
        if not others or w <= 0 or h <= 0:
            continue
        covered = np.zeros((img["height"], img["width"]), dtype=bool)
        for o in others:
            if o["id"] not in masks:
                masks[o["id"]] = coco.ann_to_mask(o).astype(bool)
            covered |= masks[o["id"]]
        if covered[y:y + h, x:x + w].mean() >= overlap:
            overlapping.add(i)
    return {"small": small, "overlap": overlapping}


def split_accuracies(bench_name: str, node: dict, predictions: Path, patch_size: float, image_size: float,
                     overlap: float) -> dict[str, float]:
    """Exact-match accuracy (×100, the benchmark's own post-processing) on each region subset and its complement,
    with the subset sizes, for a benchmark whose annotations are COCO instances (e.g. ``coco_cls``)."""
    from regionvlm.evaluation.benchmark import load_benchmark
    from regionvlm.evaluation.labels import exact_match_accuracy

    node = dict(node)
    bench = load_benchmark(node.pop("config", bench_name), **node)
    coco = bench.annotations
    if not hasattr(coco, "anns") or not hasattr(coco, "category_name"):
        raise ConfigError(f"splits.{bench_name}: needs a benchmark over COCO instances (such as coco_cls)")
    rows = [json.loads(line) for line in predictions.read_text().splitlines() if line.strip()]
    preds = {int(r["id"]): bench.postprocess(r["text"]) for r in rows}
    missing = [i for i in preds if i not in coco.anns]
    if missing:
        raise DataError(f"{predictions}: id {missing[0]} is not an annotation of {bench.annotation_paths[0]}")
    ids = sorted(preds)
    out: dict[str, float] = {}
    for name, subset in region_subsets(coco, ids, patch_size, image_size, overlap).items():
        for label, chosen in ((name, [i for i in ids if i in subset]), (f"not_{name}", [i for i in ids
                                                                                            if i not in subset])):
            truth = [coco.category_name(coco.anns[i]) for i in chosen]
            out[f"accuracy_{label}"] = exact_match_accuracy([preds[i] for i in chosen], truth) if chosen else math.nan
            out[f"n_{label}"] = float(len(chosen))
    return out
