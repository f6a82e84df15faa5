"""Stage 6's report: ``report.json`` (counts per stage and per drop reason), ``caption_lengths.png`` (a histogram
of the kept captions' word counts) and ``gallery.png`` (sampled regions drawn with their class and caption).

Every region of the sources is accounted for: ``sources.regions == kept + sum(dropped.values())``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from regionvlm.datagen.filters import REASONS, words
from regionvlm.datagen.settings import DatagenSettings
from regionvlm.io import dumps_json, write_text

SELECTION_REASONS = ("crowd", "area", "class", "max_per_image")


def counts_of(records: list[dict], rows: list[dict], counts: dict) -> dict:
    regions = [r for rec in records for r in rec["regions"]]
    dropped = dict.fromkeys((*SELECTION_REASONS, "image_error", *REASONS), 0)
    dropped.update(counts["selection_drops"])
    for r in regions:
        if r["dropped"]:
            dropped[r["dropped"]] = dropped.get(r["dropped"], 0) + 1
    kept = [r for r in regions if r["dropped"] is None]
    lengths = [len(words(r["caption"])) for r in kept]
    return {
        "stages": {**{k: counts[k] for k in ("sources", "selection")},
                   "global_caption": {"images": sum(rec["error"] is None for rec in records)},
                   "region_caption": {"regions": sum(r["dropped"] != "image_error" for r in regions)},
                   "verification": {"kept": len(kept)},
                   "output": {"rows": len(rows), "regions": len(kept)}},
        "dropped": dropped,
        "caption_words": {"mean": float(np.mean(lengths)) if lengths else 0.0,
                          "min": min(lengths, default=0), "max": max(lengths, default=0)},
    }


def histogram_png(lengths: list[int], path: Path, bins: int = 20) -> None:
    """A bar chart of caption lengths in words (PIL only: no plotting library needed)."""
    from PIL import Image, ImageDraw

    from regionvlm.viz import _font, save_png

    w, h, pad = 640, 360, 48
    img = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = _font(12)
    top = max(lengths, default=1)
    edges = np.linspace(0, top + 1, bins + 1)
    hist, _ = np.histogram(lengths, bins=edges)
    peak = max(int(hist.max()) if len(hist) else 1, 1)
    bar_w = (w - 2 * pad) / bins
    for k, n in enumerate(hist):
        x0 = pad + k * bar_w
        y0 = h - pad - (h - 2 * pad) * n / peak
        draw.rectangle([x0 + 1, y0, x0 + bar_w - 1, h - pad], fill=(0, 130, 200))
    draw.line([pad, h - pad, w - pad, h - pad], fill=(0, 0, 0))
    draw.line([pad, pad, pad, h - pad], fill=(0, 0, 0))
    for k in range(0, bins + 1, max(1, bins // 5)):
        draw.text((pad + k * bar_w - 6, h - pad + 4), f"{edges[k]:.0f}", fill=(0, 0, 0), font=font)
    draw.text((pad - 30, pad - 6), str(peak), fill=(0, 0, 0), font=font)
    draw.text((w // 2 - 120, 12), f"caption length (words), {len(lengths)} captions", fill=(0, 0, 0), font=font)
    save_png(img, path)


def gallery_png(records: list[dict], path: Path, n: int, seed: int) -> None:
    """``n`` kept regions (a seeded draw) drawn on their images with their class, global and region caption."""
    from regionvlm.data.structures import Regions
    from regionvlm.viz import draw_regions, grid, save_png, with_text_panel

    kept = [(rec, r) for rec in records for r in rec["regions"] if r["dropped"] is None]
    if not kept or n <= 0:
        return
    picks = sorted(np.random.default_rng(seed).choice(len(kept), size=min(n, len(kept)), replace=False).tolist())
    tiles = []
    for rec, r in (kept[k] for k in picks):
        picture = draw_regions(rec["image"], Regions.from_dicts([r["region"]], (rec["height"], rec["width"])))
        if picture.height < 256:  # small images (the synthetic set) are enlarged to be readable
            scale = -(-256 // picture.height)
            picture = picture.resize((picture.width * scale, picture.height * scale), resample=0)
        tiles.append(with_text_panel(picture, [r["id"], f"class: {r['class_name']}",
                                               f"image: {rec['global_caption']}", "", r["caption"]]))
    save_png(grid(tiles, 2), path)


def write_report(out_dir: Path, records: list[dict], rows: list[dict], counts: dict, s: DatagenSettings) -> dict:
    report = counts_of(records, rows, counts)
    write_text(out_dir / "report" / "report.json", dumps_json(report, indent=2) + "\n")
    kept = [len(words(r["caption"])) for rec in records for r in rec["regions"] if r["dropped"] is None]
    histogram_png(kept, out_dir / "report" / "caption_lengths.png")
    gallery_png(records, out_dir / "report" / "gallery.png", s.gallery, s.seed)
    report["files"] = {"captions": str(out_dir / s.output.file), "report": str(out_dir / "report")}
    return report


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"datagen → {report['files']['captions']} (report: {report['files']['report']})")
    table.add_column("stage / drop reason")
    table.add_column("count", justify="right")
    for stage, values in report["stages"].items():
        table.add_row(stage, ", ".join(f"{v} {k}" for k, v in values.items()))
    for reason, n in report["dropped"].items():
        if n:
            table.add_row(f"  dropped: {reason}", str(n))
    Console().print(table)
