"""The table of an ablation: finished cells merged per variant (mean ± sample std over seeds) into ``table.md``,
``table.json`` and ``chart.png``."""

from __future__ import annotations

import json
import math
from pathlib import Path

from regionvlm.ablation.spec import Cell, Spec, cell_dir
from regionvlm.errors import DataError
from regionvlm.io import dumps_json, write_text


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
            grouped[cell.variant].setdefault(name, []).append(math.nan if value is None else float(value))
    return grouped, missing


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values; NaN for what they do not define (no value; the
    spread of one value, which is unknown, not 0)."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else math.nan
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
            spread = "—" if r["std"] is None else f"{r['std']:.1f}"
            cells.append("—" if r["mean"] is None else f"{r['mean']:.1f} ± {spread}" + (
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
    top = max([100.0] + [r["mean"] + (r["std"] or 0.0) for row in summary["variants"].values()
                         for r in row.values() if r["mean"] is not None])
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
            std = r["std"] or 0.0  # one seed: no spread to draw
            lo, hi = base - plot_h * (r["mean"] - std) / top, base - plot_h * (r["mean"] + std) / top
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
    write_text(spec.output / "table.json", dumps_json(summary, indent=2) + "\n")
    write_text(spec.output / "table.md", markdown_table(summary))
    bar_chart(summary, spec.output / "chart.png")
    return summary
