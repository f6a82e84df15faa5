"""The synthetic `spatial` and `dlc` benchmark files, derived from a COCO-format instances file whose categories
are named "<colour> <shape>" (formats in docs/benchmarks.md; `write_synthetic` writes both from its val split)."""

from __future__ import annotations

import itertools

from regionvlm.data.formats import CocoInstances, write_jsonl


def make_synthetic_spatial(instances_path: str, out_path: str, meters_per_pixel: float = 0.01,
                           max_pairs_per_image: int = 2) -> int:
    """Derive a spatial QA jsonl from a COCO-format instances file (synthetic scenes with boxes named like
    "red circle"): left/above/bigger predicates, a left choice, width and distance questions per object pair.
    Boxes are in pixels and ``meters_per_pixel`` gives the metric scale. Returns the number of questions."""
    inst = CocoInstances(instances_path)
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
    write_jsonl(out_path, rows)
    return len(rows)


def make_synthetic_dlc(instances_path: str, out_path: str) -> int:
    """Derive a DLC-style jsonl from a COCO-format instances file whose categories are named "<colour> <shape>"
    ("red circle"): per object a positive colour and shape question and a negative question per absent colour
    (at most two). Returns the number of regions."""
    inst = CocoInstances(instances_path)
    split = {cid: c["name"].split(" ", 1) if " " in c["name"] else ["", c["name"]] for cid, c in inst.cats.items()}
    colours = sorted({c for c, _ in split.values() if c})
    shapes = sorted({s for _, s in split.values()})
    rows = []
    for ann_id in sorted(inst.anns):
        ann = inst.anns[ann_id]
        colour, shape = split[ann["category_id"]]
        questions = []
        if colour:
            questions.append({"type": "positive", "question": "What is the colour of the object?", "choices": [
                {"text": colour, "score": 1, "keywords": [colour]},
                *({"text": o, "score": -1, "keywords": [o]} for o in colours if o != colour),
                {"text": "the colour is not mentioned", "score": 0, "default": True}]})
        questions.append({"type": "positive", "question": "What is the shape of the object?", "choices": [
            {"text": shape, "score": 1, "keywords": [shape]},
            {"text": f"round, but not a {shape}", "score": 0.5, "keywords": ["round"]} if shape in ("circle", "ellipse")
            else {"text": f"angular, but not a {shape}", "score": 0.5, "keywords": ["angular"]},
            *({"text": o, "score": -1, "keywords": [o]} for o in shapes if o != shape),
            {"text": "the shape is not mentioned", "score": 0, "default": True}]})
        for other in [c for c in colours if c != colour][:2]:
            questions.append({"type": "negative", "question": f"Does the description say the object is {other}?",
                              "choices": [{"text": f"it says the object is {other}", "score": -1, "keywords": [other]},
                                          {"text": f"it does not say the object is {other}", "score": 1,
                                           "default": True}]})
        rows.append({"id": ann_id, "image": inst.images[ann["image_id"]]["file_name"],
                     "regions": [{"bbox": list(ann["bbox"])}], "class_name": inst.category_name(ann),
                     "questions": questions})
    write_jsonl(out_path, rows)
    return len(rows)
