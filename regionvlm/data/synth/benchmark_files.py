"""The synthetic benchmark files in their official formats (docs/benchmarks.md), derived from a COCO-format
instances file whose categories are named "<colour> <shape>": GLaMM's region captions, SpatialRGPT-Bench,
DLC-Bench and Osprey's LVIS/PACO format (`write_synthetic` writes them from its val split)."""

from __future__ import annotations

import itertools

from regionvlm.data.formats import CocoInstances, write_json


def synthetic_spatial_rows(inst: CocoInstances, meters_per_pixel: float = 0.01,
                           max_pairs_per_image: int = 2) -> list[dict]:
    """Spatial questions about the synthetic scenes (boxes named like "red circle"): left/above/bigger
    predicates, a left choice, width and distance per object pair; ``label`` is "yes"/"no" or the 1-based region
    number, ``value`` metres. Boxes are in pixels and ``meters_per_pixel`` gives the metric scale."""
    rows: list[dict] = []
    for image_id in sorted(inst.images):
        anns = sorted((a for a in inst.anns_by_image[image_id] if "bbox" in a), key=lambda a: a["id"])
        for a, b in list(itertools.pairwise(anns))[:max_pairs_per_image]:
            (ax, ay, aw, ah), (bx, by, bw, bh) = a["bbox"], b["bbox"]
            acx, acy, bcx, bcy = ax + aw / 2, ay + ah / 2, bx + bw / 2, by + bh / 2
            na, nb = inst.category_name(a), inst.category_name(b)
            base = {"image": inst.images[image_id]["file_name"], "regions": [{"bbox": a["bbox"]}, {"bbox": b["bbox"]}]}

            def add(question, answer, base=base, **info):
                rows.append({"id": len(rows), **base, "question": question, "answer": answer, "qa_info": info})

            if acx != bcx:
                left = acx < bcx
                add("Is <region1> to the left of <region2>?", f"{'Yes' if left else 'No'}, the {na} is "
                    f"{'left' if left else 'right'} of the {nb}.", type="qualitative", category="left_predicate",
                    label="yes" if left else "no")
                add("Which is more to the left, <region1> or <region2>?", f"Region [{1 if left else 2}].",
                    type="qualitative", category="left_choice", label=1 if left else 2)
            if acy != bcy:
                above = acy < bcy
                add("Is <region1> above <region2>?", "Yes." if above else "No.", type="qualitative",
                    category="above_predicate", label="yes" if above else "no")
            if aw * ah != bw * bh:
                big = aw * ah > bw * bh
                add("Is <region1> bigger than <region2>?", "Yes." if big else "No.", type="qualitative",
                    category="big_predicate", label="yes" if big else "no")
            width = round(aw * meters_per_pixel, 4)
            add("How wide is <region1>?", f"The {na} is {width:.2f} meters wide.", type="quantitative",
                category="width_data", value=width)
            dist = round(((acx - bcx) ** 2 + (acy - bcy) ** 2) ** 0.5 * meters_per_pixel, 4)
            if dist > 0:
                add("How far apart are <region1> and <region2>?", f"They are {dist:.2f} meters apart.",
                    type="quantitative", category="distance_data", value=dist)
    return rows


# -- the official benchmark formats (docs/benchmarks.md), derived from the synthetic COCO-format files ------------
def _rle(ann: dict, inst: CocoInstances) -> dict:
    rle = inst.ann_to_rle(ann)
    return {"size": list(rle["size"]), "counts": rle["counts"].decode() if isinstance(rle["counts"], bytes)
            else rle["counts"]}


_SENTENCES = (  # chosen by annotation id, so the file needs no random state
    "This is a {size}{colour} {shape} with a {pattern} fill, in the {where} of the image.",
    "A {size}{pattern} {colour} {shape} sits in the {where} of the image.",
    "The region shows a {size}{colour} {shape}; its fill is {pattern}, and it lies in the {where} of the image.",
)


def region_sentence(ann: dict, category: str, width: int, height: int) -> str:
    """One sentence about a synthetic object: colour, shape, fill pattern, size and where it lies."""
    colour, shape = category.split(" ", 1)
    attrs = ann.get("attributes", {})
    size = {"small": "small ", "large": "large "}.get(attrs.get("size"), "")
    x, y, w, h = ann["bbox"]
    col = ("left", "centre", "right")[min(int(3 * (x + w / 2) / width), 2)]
    row = ("top", "middle", "bottom")[min(int(3 * (y + h / 2) / height), 2)]
    where = "centre" if (row, col) == ("middle", "centre") else f"{row} {col}".replace("middle ", "")
    return _SENTENCES[ann["id"] % len(_SENTENCES)].format(
        size=size, colour=colour, shape=shape, pattern=attrs.get("pattern", "solid"), where=where)


def make_region_captions(instances_path: str, out_path: str, refs: list[dict] | None = None,
                         split: str = "val", sentences: bool = False) -> int:
    """GLaMM's COCO-caption region format (``finetune_refcocog_val_captions.json``/``test_caption.json``): one
    image entry per sentence of ``refs`` (in ``split``), or per annotation captioned "a <category>" when no refs
    are given (``sentences``: a `region_sentence` instead); the entry's annotation has the entry's id. Returns the
    number of entries."""
    inst = CocoInstances(instances_path)

    def caption(ann: dict) -> str:
        name, im = inst.category_name(ann), inst.images[ann["image_id"]]
        return region_sentence(ann, name, im["width"], im["height"]) if sentences else f"a {name}"

    pairs = ([(inst.anns[r["ann_id"]], s["sent"]) for r in sorted(refs, key=lambda r: r["ref_id"])
              if r["split"] == split for s in r["sentences"]] if refs is not None
             else [(inst.anns[k], caption(inst.anns[k])) for k in sorted(inst.anns)])
    images, anns = [], []
    for k, (ann, caption) in enumerate(pairs, 1):
        im = inst.images[ann["image_id"]]
        images.append({"id": k, "file_name": im["file_name"], "height": im["height"], "width": im["width"],
                       "caption": caption, "original_id": im["id"]})
        anns.append({"id": k, "image_id": k, "bbox": list(ann["bbox"]), "segmentation": ann.get("segmentation"),
                     "area": ann.get("area", 0), "iscrowd": 0, "category_id": 1, "caption": caption})
    write_json(out_path, {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]})
    return len(images)


def _clock(ax: float, ay: float, bx: float, by: float) -> int:
    """Clock position of b seen from a (12 = up in the image)."""
    import math

    hours = round(math.degrees(math.atan2(bx - ax, ay - by)) / 30) % 12
    return 12 if hours == 0 else hours


def make_spatialrgpt_bench(instances_path: str, out_path: str, meters_per_pixel: float = 0.01) -> int:
    """``SpatialRGPT-Bench_v1.json``'s format from the synthetic questions (`synthetic_spatial_rows`), plus a
    clock-direction question per pair: ``<mask>`` placeholders, answers naming regions 0-based ("Region [0]"),
    regions as ``rle`` masks and ``bbox`` boxes. Returns the number of questions."""
    inst = CocoInstances(instances_path)
    by_file = {im["file_name"]: im for im in inst.images.values()}
    out, seen_pairs = [], set()
    for r in synthetic_spatial_rows(inst, meters_per_pixel=meters_per_pixel):
        im = by_file[r["image"]]
        boxes = [b["bbox"] for b in r["regions"]]
        anns = [next(a for a in inst.anns_by_image[im["id"]] if list(a["bbox"]) == list(b)) for b in boxes]

        def add(question: str, answer: str, info: dict, r=r, im=im, boxes=boxes, anns=anns):
            out.append({"id": len(out), "image_info": {"file_path": r["image"], "height": im["height"],
                                                       "width": im["width"]},
                        "text_q": question.replace("<mask>", "Region [{}]").format(*range(len(boxes))),
                        "qa_info": info, "bbox": [[x, y, x + w, y + h] for x, y, w, h in boxes],
                        "rle": [_rle(a, inst) for a in anns],
                        "conversations": [{"from": "human", "value": "<image>\n" + question},
                                          {"from": "gpt", "value": answer}]})

        info = r["qa_info"]
        question = r["question"].replace("<region1>", "<mask>").replace("<region2>", "<mask>")
        answer = r["answer"]
        if info["category"].endswith("_choice"):
            answer = f"Region [{info['label'] - 1}]."
        add(question, answer, {"type": info["type"], "category": info["category"]})
        key = tuple(a["id"] for a in anns)
        if len(anns) == 2 and key not in seen_pairs:
            seen_pairs.add(key)
            (ax, ay, aw, ah), (bx, by, bw, bh) = boxes
            clock = _clock(ax + aw / 2, ay + ah / 2, bx + bw / 2, by + bh / 2)
            add("If you are at <mask>, where will you find <mask>?",
                f"Region [0] will find Region [1] around the {clock} o'clock direction.",
                {"type": "quantitative", "category": "direction"})
    write_json(out_path, out)
    return len(out)


def make_dlc_bench(instances_path: str, out_dir: str) -> int:
    """DLC-Bench's files under ``out_dir``: ``annotations.json`` (the instances), ``qa.json`` (per annotation id:
    colour and shape questions, positive, and absent colours, negative; choices ``[text, score]``, at most five as
    DAM's letters A–E) and ``class_names.json``. Categories are named "<colour> <shape>". Returns the regions."""
    from pathlib import Path

    inst = CocoInstances(instances_path)
    split = {cid: c["name"].split(" ", 1) if " " in c["name"] else ["", c["name"]] for cid, c in inst.cats.items()}
    colours = sorted({c for c, _ in split.values() if c})
    shapes = sorted({s for _, s in split.values()})
    qa, names = {}, {}
    for ann_id in sorted(inst.anns):
        colour, shape = split[inst.anns[ann_id]["category_id"]]
        others = [c for c in colours if c != colour]
        questions = [{"type": "positive", "question": "What is the shape of the object?",
                      "choices": [[shape, 1], *([o, -1] for o in [s for s in shapes if s != shape][:3]),
                                  ["The shape is not mentioned", 0]]}]
        if colour:
            questions.insert(0, {"type": "positive", "question": "What is the colour of the object?",
                                 "choices": [[colour, 1], *([o, -1] for o in others[:3]),
                                             ["The colour is not mentioned", 0]]})
        for other in others[:2]:
            questions.append({"type": "negative", "question": f"Is the object {other}?",
                              "choices": [[f"Yes, it is {other}", -1], ["The colour is not mentioned", 1]]})
        qa[str(ann_id)], names[str(ann_id)] = questions, inst.category_name(inst.anns[ann_id])
    out = Path(out_dir)
    write_json(out / "annotations.json", {"images": list(inst.images.values()),
                                          "annotations": [inst.anns[k] for k in sorted(inst.anns)],
                                          "categories": list(inst.cats.values())})
    write_json(out / "qa.json", qa)
    write_json(out / "class_names.json", names)
    return len(qa)


def make_osprey_categories(instances_path: str, out_path: str) -> int:
    """Osprey's LVIS/PACO eval format: one entry per image with its regions' ``categories`` and
    ``annotations`` (segmentations). Returns the number of regions."""
    inst = CocoInstances(instances_path)
    entries = []
    for image_id, im in inst.images.items():
        anns = sorted(inst.anns_by_image[image_id], key=lambda a: a["id"])
        if anns:
            entries.append({"file_name": im["file_name"], "height": im["height"], "width": im["width"],
                            "categories": [inst.category_name(a) for a in anns],
                            "annotations": [{"segmentation": a["segmentation"]} for a in anns]})
    write_json(out_path, entries)
    return sum(len(e["categories"]) for e in entries)
