"""The datagen job: plan → caption (Lightning's predict loop) → chunks on disk → merge → output and report.

- Plan: sources are read and regions selected on every process alike (deterministic), images numbered in path
  order; ``datagen.shard=i datagen.num_shards=n`` keeps images ``i, i+n, …`` (independent jobs, a SLURM array).
- Caption: the shard's unfinished images go through ``trainer.predict``; Lightning's strategy spreads them over
  the devices and nodes of the ``trainer:`` section (its predict sampler never repeats an image). Each predict
  step captions a batch of images and writes one chunk, ``<dir>/chunks/<first>-<last>.jsonl`` (image numbers),
  to a temporary name renamed into place: every rank writes its own chunks, and a killed job leaves only
  complete chunks. A rerun reads the chunks, skips the images they hold, and so never loses or repeats one.
- Merge (rank 0, once every shard is complete; ``--merge`` forces a retry): the chunks are concatenated in image
  order, every selected region checked to appear exactly once (kept, or dropped with its reason), and the
  output jsonl (the ``conversations`` dataset's format) and the report written.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from regionvlm.datagen import filters
from regionvlm.datagen.crops import close_up
from regionvlm.datagen.settings import DatagenSettings
from regionvlm.datagen.sources import SourceImage, region_dict
from regionvlm.errors import DataError
from regionvlm.io import dumps_json, write_text


# -- captioning a batch of images ------------------------------------------------------------------------------
def decode(index: int, im: SourceImage) -> tuple[int, SourceImage, Any, Any, str | None]:
    """``(index, im, PIL image, its Regions, error)`` (in DataLoader workers): an unreadable image is a drop
    reason, not the end of a long job."""
    from regionvlm.data.processing import load_image

    try:
        pil = load_image(im.image, where=im.key)
        return index, im, pil, im.region_set().with_image_size(pil.height, pil.width), None
    except DataError as exc:
        return index, im, None, None, str(exc)


def caption_images(decoded: list[tuple], captioner: Any, s: DatagenSettings, judge: Any = None) -> list[dict]:
    """One record per image: ``{"index", "key", "image", "height", "width", "global_caption", "regions":
    [{"id", "class_name", "caption", "dropped": reason | None, "region": region dict}]}``. The captioner sees
    every global request of the batch at once, then every region request. ``decoded``: `decode`'s tuples."""
    ok = [d for d in decoded if d[2] is not None]
    globals_ = captioner.caption([{"image": pil, "prompt": s.prompts.global_, "regions": regions, "stage": "global",
                                   "class_name": None, "global_caption": None} for _, _, pil, regions, _ in ok])
    global_of = {d[0]: g.strip() for d, g in zip(ok, globals_)}
    requests, where = [], []
    for index, im, pil, regions, _ in ok:
        for k, region in enumerate(im.regions):
            crop, local = close_up(pil, regions[k], s.crop)
            template = s.prompts.region_with_class if s.prompts.use_class and region.class_name else s.prompts.region
            g = global_of[index].rstrip(".")
            requests.append({"image": crop, "regions": local, "stage": "region", "class_name": region.class_name,
                             "global_caption": g,
                             "prompt": template.format(global_caption=g, class_name=region.class_name or "object")})
            where.append((index, k))
    captions = dict(zip(where, captioner.caption(requests))) if requests else {}
    records = []
    for index, im, pil, _, error in decoded:
        record = {"index": index, "key": im.key, "image": str(im.image), "height": pil.height if pil else None,
                  "width": pil.width if pil else None, "global_caption": global_of.get(index), "error": error,
                  "regions": []}
        others = [global_of[index]] if index in global_of else []
        for k, region in enumerate(im.regions):
            caption = captions.get((index, k), "").strip() if error is None else None
            reason = "image_error" if error else filters.rule_failure(caption, region.class_name, others, s.filters)
            if reason is None:
                others.append(caption)
            record["regions"].append({"id": region.id, "class_name": region.class_name, "caption": caption,
                                      "dropped": reason, "region": region_dict(region.item)})
        records.append(record)
    if judge is not None:
        _judge(records, judge, s)
    return records


def _judge(records: list[dict], judge: Any, s: DatagenSettings) -> None:
    todo = [r for rec in records for r in rec["regions"] if r["dropped"] is None and r["class_name"]]
    if not todo:
        return
    replies = judge([s.filters.judge_prompt.format(class_name=r["class_name"], caption=r["caption"]) for r in todo])
    for r, reply in zip(todo, replies):
        if not filters.judge_says_yes(reply):
            r["dropped"] = "judge"


# -- chunks on disk --------------------------------------------------------------------------------------------
def chunk_dir(out_dir: Path) -> Path:
    return out_dir / "chunks"


def write_chunk(out_dir: Path, records: list[dict]) -> Path:
    """Write-then-rename: a chunk exists whole or not at all. Named by its first and last image number, which
    no other chunk can share (a rerun only captions images that no chunk holds)."""
    indices = [r["index"] for r in records]
    path = chunk_dir(out_dir) / f"{min(indices):09d}-{max(indices):09d}.jsonl"
    write_text(path, "".join(dumps_json(r) + "\n" for r in records))
    return path


def read_chunks(out_dir: Path) -> dict[int, dict]:
    """Image number → record, from every chunk. An image in two chunks is a `DataError` naming both."""
    records: dict[int, dict] = {}
    origin: dict[int, str] = {}
    for path in sorted(chunk_dir(out_dir).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if rec["index"] in records:
                raise DataError(f"{path}: image {rec['key']} is also in {origin[rec['index']]}; "
                                f"each image must be captioned once")
            records[rec["index"]], origin[rec["index"]] = rec, path.name
    return records


# -- output ----------------------------------------------------------------------------------------------------
def output_rows(records: list[dict], s: DatagenSettings) -> list[dict]:
    """Conversation-jsonl rows (the ``conversations`` dataset's format) for the kept regions, in image order."""
    rows = []
    for rec in records:
        kept = [r for r in rec["regions"] if r["dropped"] is None]
        base = {"image": rec["image"], "height": rec["height"], "width": rec["width"]}
        if s.output.per == "image" and kept:
            turns = []
            for k, r in enumerate(kept, start=1):
                question = s.output.question.replace("<region1>", f"<region{k}>")
                turns += [{"from": "human", "value": ("<image>\n" if k == 1 else "") + question},
                          {"from": "gpt", "value": r["caption"]}]
            rows.append({"id": rec["key"], **base, "regions": [r["region"] for r in kept], "conversations": turns,
                         "task": "detailed_caption",
                         "target": {"region_ids": [r["id"] for r in kept], "global_caption": rec["global_caption"]}})
            continue
        for r in kept:
            rows.append({"id": r["id"], **base, "regions": [r["region"]],
                         "conversations": [{"from": "human", "value": "<image>\n" + s.output.question},
                                           {"from": "gpt", "value": r["caption"]}],
                         "task": "detailed_caption",
                         "target": {"class_name": r["class_name"], "global_caption": rec["global_caption"]}})
    return rows


def check_complete(records: dict[int, dict], selected: list[SourceImage]) -> list[int]:
    """The image numbers still to caption; a record whose regions differ from the selection (another config's
    chunks in this folder) is a `DataError`."""
    todo = []
    for index, im in enumerate(selected):
        rec = records.get(index)
        if rec is None:
            todo.append(index)
        elif rec["key"] != im.key or [r["id"] for r in rec["regions"]] != [r.id for r in im.regions]:
            raise DataError(f"chunks: image {index} holds {rec['key']} with regions "
                            f"{[r['id'] for r in rec['regions']]}, but this config selects {im.key} with "
                            f"{[r.id for r in im.regions]}; use another datagen.output.dir for another selection")
    extra = set(records) - set(range(len(selected)))
    if extra:
        raise DataError(f"chunks: images {sorted(extra)[:5]} are not in this config's selection; use another "
                        f"datagen.output.dir")
    return todo


def merge(out_dir: Path, selected: list[SourceImage], counts: dict, s: DatagenSettings) -> dict | None:
    """Concatenate the chunks into ``output.file`` and write the report; None (nothing written) while images are
    missing. Every selected region appears exactly once: `check_complete` and `read_chunks` see to it."""
    from regionvlm.datagen.report import write_report

    records = read_chunks(out_dir)
    todo = check_complete(records, selected)
    if todo:
        return None
    ordered = [records[i] for i in range(len(selected))]
    rows = output_rows(ordered, s)
    write_text(out_dir / s.output.file, "".join(dumps_json(r) + "\n" for r in rows))
    return write_report(out_dir, ordered, rows, counts, s)


def drop_counts(records: list[dict]) -> Counter:
    return Counter(r["dropped"] for rec in records for r in rec["regions"] if r["dropped"])
