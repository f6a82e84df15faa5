"""Human-readable evaluation output: the results table and a gallery of examples per benchmark."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MISSING = "—"   # a metric over zero items (null in JSON): no measurement, never a perfect-looking 0.00


def format_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def results_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table, one row per (benchmark, metric)."""
    lines = ["| benchmark | metric | value |", "|---|---|---|"]
    for bench, metrics in results.items():
        for metric, value in metrics.items():
            lines.append(f"| {bench} | {metric} | {format_value(value)} |")
    return "\n".join(lines)


def print_results(results: Mapping[str, Mapping[str, Any]], title: str = "results") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("benchmark", "metric", "value"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for bench, metrics in results.items():
        for i, (metric, value) in enumerate(metrics.items()):
            table.add_row(bench if i == 0 else "", metric, format_value(value))
    Console().print(table)


def reference_text(target: Any) -> str:
    """A short reference string from a sample's ``target`` (answer, caption(s), label...)."""
    if isinstance(target, Mapping):
        for key in ("answer", "name", "caption", "captions", "label", "text"):
            if key in target:
                value = target[key]
                return "; ".join(map(str, value[:3])) if isinstance(value, list) else str(value)
        return ""
    return "" if target is None else str(target)


def write_gallery(path: str | Path, samples: Sequence[dict], predictions: Sequence[str], title: str = "",
                  columns: int = 2) -> None:
    """A PNG grid: each sample's image with its regions drawn, the question, the prediction and the reference."""
    from regionvlm.viz import draw_regions, grid, save_png, with_text_panel

    tiles = []
    for sample, prediction in zip(samples, predictions):
        regions = sample["regions"]
        question = next((t["value"] for t in sample["conversations"] if t["from"] == "human"), "")
        lines = [f"[{title}] {sample['id']}", "Q: " + question.replace("<image>\n", ""), "",
                 "prediction: " + prediction, "reference: " + reference_text(sample.get("target"))]
        picture = draw_regions(sample["image"], regions)
        if picture.height < 256:  # small images (the synthetic set) are enlarged to be readable
            scale = -(-256 // picture.height)
            picture = picture.resize((picture.width * scale, picture.height * scale), resample=0)
        tiles.append(with_text_panel(picture, lines))
    if tiles:
        save_png(grid(tiles, columns), path)
