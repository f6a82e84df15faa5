"""``regionvlm viz FILE.jsonl --out DIR``: one PNG per row of a conversation / predict-output jsonl, with the
regions drawn and the row's answer (``answer``, else the last assistant turn) on the picture."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="jsonl rows with id, image, regions and conversations (or answer)")
    parser.add_argument("--out", required=True, help="folder for the PNG files")
    parser.add_argument("--image-root", default="", help="folder that relative image paths are in")
    parser.add_argument("--limit", type=int, default=None, help="draw only the first N rows")


def row_text(row: dict) -> list[str]:
    turns = row.get("conversations", [])
    question = row.get("question") or next((t["value"] for t in reversed(turns) if t.get("from") == "human"), "")
    answer = row.get("answer") or next((t["value"] for t in reversed(turns) if t.get("from") == "gpt"), "")
    return [f"Q: {question.replace('<image>', '').strip()}", f"A: {answer}"]


def run(args: argparse.Namespace) -> int:
    from regionvlm.data.formats import read_jsonl
    from regionvlm.data.structures import Regions
    from regionvlm.errors import DataError
    from regionvlm.viz import draw_regions, overlay_text, save_png

    rows = read_jsonl(args.input)[: args.limit]
    out = Path(args.out)
    for n, row in enumerate(rows, 1):
        where = f"{args.input}:{n}"
        if "image" not in row:
            raise DataError(f"{where}: row has no 'image'")
        image = row["image"] if os.path.isabs(row["image"]) else os.path.join(args.image_root, row["image"])
        regions = Regions.from_dicts(row.get("regions", []), where=f"{where}: regions")
        picture = overlay_text(draw_regions(image, regions), row_text(row))
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(row.get("id", n)))
        save_png(picture, out / f"{name}.png")
    print(f"{len(rows)} pictures written to {out}")
    return 0
