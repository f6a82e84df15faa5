"""Ablations by config (``regionvlm ablate SPEC.yaml``): variants × seeds, each cell trained and evaluated
through the same code as ``regionvlm train`` and ``regionvlm eval``, then one table (mean ± std over seeds) in
Markdown and JSON and a bar chart.

A spec (YAML; ``${oc.env:...}`` resolves; relative paths are the spec file's)::

    train: stage2.yaml                 # the training config every cell starts from (file or recipe name)
    eval: eval.yaml                    # the config whose ``eval:`` section evaluates each cell's export
    overrides: [trainer.max_steps=300] # applied to every cell's training config
    eval_overrides: []                 # applied to every cell's evaluation config
    seeds: [0, 1, 2]
    variants:                          # name → overrides, or {overrides: [...], eval_overrides: [...]}
      baseline: []
      no_refiner: [model.feature_refiner.type=identity]
    metrics: [coco_cls.accuracy]       # table columns, ``benchmark.metric`` (default: every metric)
    splits:                            # per COCO-instances benchmark: accuracy on region subsets (see below)
      coco_cls: {patch_size: 16, image_size: 128, overlap: 0.25}
    output: runs/ablations/NAME        # default: ${REGIONVLM_OUTPUT:-runs}/ablations/<spec file stem>

Cell ``i`` (``--list`` prints them; seed-major, so a sweep cut short already has every variant once) trains
into ``<output>/cells/<variant>-seed<k>/`` and writes ``result.json`` there last, atomically: a cell with that
file is finished and skipped on a rerun; one with a checkpoint but no export resumes from ``last.ckpt``; one
with an export but no result is only evaluated. So ``--cell i`` can run as one task of a job array, and
the table step merges whatever cells have finished.

Splits (RGPT's claims (a) and (b)): ``small`` = regions whose visible mask is smaller than one patch of the
vision encoder (area < patch_size², in the pixels the encoder sees: the image padded to a square and resized
to ``image_size``); ``overlap`` = regions whose box is at least that fraction covered by *other* annotated
objects' masks (overlapping or nested shapes: there a box describes different content than the mask).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regionvlm.errors import ConfigError, DataError
from regionvlm.io import write_text

SPEC_KEYS = ("train", "eval", "overrides", "eval_overrides", "seeds", "variants", "metrics", "splits", "output")
SPLIT_KEYS = ("patch_size", "image_size", "overlap")


@dataclass(frozen=True)
class Cell:
    index: int
    variant: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.variant}-seed{self.seed}"


@dataclass
class Spec:
    path: Path
    train: Path
    eval: Path
    overrides: list[str]
    eval_overrides: list[str]
    seeds: list[int]
    variants: dict[str, dict[str, list[str]]]
    metrics: list[str] | None
    splits: dict[str, dict[str, float]]
    output: Path

    def cells(self) -> list[Cell]:
        pairs = [(v, s) for s in self.seeds for v in self.variants]  # seed-major: see the module doc
        return [Cell(i, v, s) for i, (v, s) in enumerate(pairs)]


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of key=value strings, got {value!r}")
    return list(value)


def _config_path(spec_dir: Path, name: Any, where: str) -> Path:
    from regionvlm.config import resolve_config_path

    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: expected a config file or recipe name, got {name!r}")
    local = spec_dir / name
    return local if local.is_file() else resolve_config_path(name)


def load_spec(path: str | os.PathLike, output: str | None = None) -> Spec:
    """Read and check an ablation spec; errors name the file and the field."""
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such ablation spec")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:
        raise ConfigError(f"{path}: cannot read the spec: {str(exc).splitlines()[0]}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with train, eval, variants, seeds")
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{path} {unknown[0]}: unknown key; known: {', '.join(SPEC_KEYS)}")
    for key in ("train", "eval", "variants"):
        if key not in raw:
            raise ConfigError(f"{path} {key}: required")
    if not isinstance(raw["variants"], dict) or not raw["variants"]:
        raise ConfigError(f"{path} variants: expected a mapping of name → overrides, got {raw['variants']!r}")
    variants = {}
    for name, node in raw["variants"].items():
        where = f"{path} variants.{name}"
        if not str(name).replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{where}: a variant name is a folder name: letters, digits, '_' and '-' only")
        if isinstance(node, dict):
            extra = sorted(set(node) - {"overrides", "eval_overrides"})
            if extra:
                raise ConfigError(f"{where}.{extra[0]}: unknown key; known: overrides, eval_overrides")
            variants[str(name)] = {"overrides": _strings(node.get("overrides"), f"{where}.overrides"),
                                   "eval_overrides": _strings(node.get("eval_overrides"), f"{where}.eval_overrides")}
        else:
            variants[str(name)] = {"overrides": _strings(node, where), "eval_overrides": []}
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path} seeds: expected a list of distinct integers, got {seeds!r}")
    metrics = raw.get("metrics")
    if metrics is not None and (not isinstance(metrics, list) or not all(isinstance(m, str) and "." in m
                                                                          for m in metrics)):
        raise ConfigError(f"{path} metrics: expected a list of 'benchmark.metric' names, got {metrics!r}")
    splits = raw.get("splits") or {}
    if not isinstance(splits, dict):
        raise ConfigError(f"{path} splits: expected {{benchmark: {{patch_size, image_size, overlap}}}}")
    for bench, node in splits.items():
        if not isinstance(node, dict) or set(node) != set(SPLIT_KEYS) \
                or not all(isinstance(v, (int, float)) and v > 0 for v in node.values()):
            raise ConfigError(f"{path} splits.{bench}: expected positive numbers for exactly "
                              f"{', '.join(SPLIT_KEYS)}, got {node!r}")
    if output is None:
        output = raw.get("output") or str(Path(os.environ.get("REGIONVLM_OUTPUT", "runs")) / "ablations" / path.stem)
    return Spec(path=path, train=_config_path(path.parent, raw["train"], f"{path} train"),
                eval=_config_path(path.parent, raw["eval"], f"{path} eval"),
                overrides=_strings(raw.get("overrides"), f"{path} overrides"),
                eval_overrides=_strings(raw.get("eval_overrides"), f"{path} eval_overrides"),
                seeds=seeds, variants=variants, metrics=metrics, splits=splits, output=Path(output))


# -- one cell ---------------------------------------------------------------------------------------------------
def cell_dir(spec: Spec, cell: Cell) -> Path:
    return spec.output / "cells" / cell.name


def cell_overrides(spec: Spec, cell: Cell) -> tuple[list[str], list[str]]:
    """The training and evaluation overrides of a cell: spec-wide, then the variant's, then seed and place."""
    variant = spec.variants[cell.variant]
    place = [f"seed={cell.seed}", f"output.root={spec.output / 'cells'}", f"output.name={cell.name}"]
    return ([*spec.overrides, *variant["overrides"], *place],
            [*spec.eval_overrides, *variant["eval_overrides"], *place, f"eval.out_dir={cell_dir(spec, cell) / 'eval'}"])


def run_cell(spec: Spec, cell: Cell) -> str:
    """Train and evaluate one cell unless it has finished; returns "skipped", "resumed" or "ran"."""
    from regionvlm.cli import command_parser

    def run_command(name: str, argv: list[str]) -> None:  # through the command's own parser: its defaults hold
        parser, module = command_parser(name)
        module.run(parser.parse_args(argv))

    out = cell_dir(spec, cell)
    if (out / "result.json").is_file():
        return "skipped"
    train_overrides, eval_overrides = cell_overrides(spec, cell)
    export = out / "export"  # published atomically by train: present = training finished
    if export.is_dir():
        status = "resumed"
    else:
        resume = "last" if (out / "checkpoints" / "last.ckpt").is_file() else None
        status = "resumed" if resume else "ran"
        run_command("train", [str(spec.train), *train_overrides,
                              *(["--resume", resume] if resume else ["--overwrite"])])
    if not (out / "eval" / "results.json").is_file():  # else a killed rerun finished evaluating already
        run_command("eval", [str(spec.eval), *eval_overrides, "--model", str(export)])  # resumes a killed eval
    metrics = read_cell_metrics(spec, cell)
    write_text(out / "result.json", json.dumps({"variant": cell.variant, "seed": cell.seed, "metrics": metrics},
                                               indent=2) + "\n")
    return status


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


# -- the table ----------------------------------------------------------------------------------------------------
def collect(spec: Spec) -> tuple[dict[str, dict[str, list[float]]], list[Cell]]:
    """Finished cells' metrics grouped ``{variant: {metric: [value per seed]}}``, and the cells not finished."""
    grouped: dict[str, dict[str, list[float]]] = {v: {} for v in spec.variants}
    missing = []
    for cell in spec.cells():
        path = cell_dir(spec, cell) / "result.json"
        if not path.is_file():
            missing.append(cell)
            continue
        try:
            metrics = json.loads(path.read_text())["metrics"]
        except (ValueError, KeyError) as exc:
            raise DataError(f"{path}: not a cell result ({exc}); delete it to rerun the cell") from exc
        for name, value in metrics.items():
            grouped[cell.variant].setdefault(name, []).append(float(value))
    return grouped, missing


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of the finite values; NaN when there are none."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, std


def summarize(spec: Spec) -> dict:
    """The table as data: ``{"metrics": [...], "variants": {name: {metric: {mean, std, n, values}}}, "missing"}``."""
    grouped, missing = collect(spec)
    seen = sorted({m for per in grouped.values() for m in per})
    metrics = [m for m in (spec.metrics or seen) if spec.metrics or not m.rsplit(".", 1)[-1].startswith("n_")]
    rows = {}
    for variant, per in grouped.items():
        rows[variant] = {}
        for m in metrics:
            values = per.get(m, [])
            mean, std = mean_std(values)
            rows[variant][m] = {"mean": None if math.isnan(mean) else round(mean, 4),
                                "std": None if math.isnan(std) else round(std, 4), "n": len(values),
                                "values": [None if math.isnan(v) else v for v in values]}
    return {"spec": str(spec.path), "seeds": spec.seeds, "metrics": metrics, "variants": rows,
            "missing": [c.name for c in missing]}


def markdown_table(summary: dict) -> str:
    metrics = summary["metrics"]
    lines = ["| variant | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for variant, row in summary["variants"].items():
        cells = []
        for m in metrics:
            r = row[m]
            cells.append("–" if r["mean"] is None else f"{r['mean']:.1f} ± {r['std']:.1f}" + (
                f" (n={r['n']})" if r["n"] != len(summary["seeds"]) else ""))
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    note = f"\nmean ± std over seeds {summary['seeds']}"
    if summary["missing"]:
        note += f"; not finished: {', '.join(summary['missing'])}"
    return "\n".join(lines) + "\n" + note + "\n"


def bar_chart(summary: dict, path: Path) -> None:
    """Grouped bars (one group per metric, one bar per variant, a line for ± std), drawn with PIL."""
    from PIL import Image, ImageDraw

    from regionvlm.viz import PALETTE, _font, save_png

    metrics, variants = summary["metrics"], list(summary["variants"])
    top = max([100.0] + [r["mean"] + r["std"] for row in summary["variants"].values() for r in row.values()
                         if r["mean"] is not None])
    bar, gap, left, plot_h, base = 14, 24, 50, 300, 340
    group_w = bar * len(variants) + gap
    width = max(left + group_w * len(metrics) + 20, 420)
    legend_h = 18 * len(variants) + 10
    img = Image.new("RGB", (width, base + 90 + legend_h), "white")
    draw, font, small = ImageDraw.Draw(img), _font(12), _font(10)
    for tick in range(0, int(top) + 1, 20):
        y = base - plot_h * tick / top
        draw.line([(left, y), (width - 10, y)], fill=(225, 225, 225))
        draw.text((5, y - 6), f"{tick}", fill="black", font=small)
    for g, m in enumerate(metrics):
        x0 = left + g * group_w + gap // 2
        for k, v in enumerate(variants):
            r = summary["variants"][v][m]
            if r["mean"] is None:
                continue
            x, h = x0 + k * bar, plot_h * r["mean"] / top
            draw.rectangle([x, base - h, x + bar - 2, base], fill=PALETTE[k % len(PALETTE)])
            lo, hi = base - plot_h * (r["mean"] - r["std"]) / top, base - plot_h * (r["mean"] + r["std"]) / top
            draw.line([(x + bar // 2 - 1, lo), (x + bar // 2 - 1, hi)], fill="black")
        label = m.split(".", 1)[-1]
        draw.text((x0, base + 6 + 14 * (g % 2)), label, fill="black", font=small)
    draw.line([(left, base), (width - 10, base)], fill="black")
    for k, v in enumerate(variants):
        y = base + 50 + 18 * k
        draw.rectangle([left, y, left + 12, y + 12], fill=PALETTE[k % len(PALETTE)])
        draw.text((left + 18, y), v, fill="black", font=font)
    save_png(img, path)


def write_table(spec: Spec) -> dict:
    """Merge the finished cells into ``table.md``, ``table.json`` and ``chart.png`` under the spec's output."""
    summary = summarize(spec)
    write_text(spec.output / "table.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_text(spec.output / "table.md", markdown_table(summary))
    bar_chart(summary, spec.output / "chart.png")
    return summary
