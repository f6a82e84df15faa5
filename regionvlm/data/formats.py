"""Readers for the official dataset files, exactly as distributed (see shared FORMATS.md), and atomic writers.

Every reader turns bad input into one `DataError` line of the form ``<file>: <field or line>: <problem>``, so a
user pointing regionvlm at a broken or wrong file learns which file and which field, instead of a KeyError deep
inside a DataLoader worker. Conversions of segmentations go through pycocotools, the reference implementation.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from regionvlm.errors import DataError
from regionvlm.io import dumps_json, write_bytes  # noqa: F401  (re-exported: the writers below build on them)

PathLike = str | os.PathLike


# -- generic json / jsonl -------------------------------------------------------------------------------------
def _open_text(path: PathLike):
    try:
        return open(path, encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot open: {exc.strerror or exc}") from None


def read_json(path: PathLike) -> Any:
    """Parse a JSON file; a syntax error names the line and column."""
    with _open_text(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {exc.lineno} col {exc.colno}: invalid JSON: {exc.msg}") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None


def iter_jsonl(path: PathLike) -> Iterator[tuple[int, Any]]:
    """``(1-based line number, parsed value)`` for each non-blank line; invalid JSON or text that is not UTF-8
    is a `DataError` naming the file (and the line)."""
    with _open_text(path) as f:
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}: line {lineno}: invalid JSON: {exc.msg}") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None


def read_jsonl(path: PathLike) -> list[dict]:
    """Parse JSON lines (blank lines skipped); each row must be an object. Errors name the 1-based line."""
    rows = []
    for lineno, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def write_json(path: PathLike, obj: Any, indent: int | None = None) -> None:
    """Atomically write ``obj`` as strict JSON (`dumps_json`)."""
    write_bytes(path, dumps_json(obj, indent=indent).encode("utf-8"))


def write_jsonl(path: PathLike, rows: Iterable[Mapping]) -> None:
    """Atomically write one strict JSON object per line."""
    text = "".join(dumps_json(r) + "\n" for r in rows)
    write_bytes(path, text.encode("utf-8"))


def write_pickle(path: PathLike, obj: Any) -> None:
    """Atomically pickle ``obj`` (protocol 2 so that old readers, e.g. the refer API, can load it)."""
    write_bytes(path, pickle.dumps(obj, protocol=2))


# -- field checks ---------------------------------------------------------------------------------------------
def _require(row: Any, keys: Iterable[str], where: str) -> None:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    for k in keys:
        if k not in row:
            raise DataError(f"{where}.{k}: missing field")


def _list_field(data: Any, key: str, path: PathLike) -> list:
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with '{key}', got {type(data).__name__}")
    if key not in data:
        raise DataError(f"{path}: {key}: missing field")
    if not isinstance(data[key], list):
        raise DataError(f"{path}: {key}: expected a list, got {type(data[key]).__name__}")
    return data[key]


# -- COCO instances -------------------------------------------------------------------------------------------
class CocoInstances:
    """A COCO-format detection/instance file (COCO, LVIS-style, V3Det, RefCOCO's ``instances.json``).

    Indexes only; segmentations stay as in the file and are decoded on demand (`ann_to_rle`, `ann_to_mask`),
    so loading a 400 MB json costs the parse and a few dicts, not N masks.
    """

    def __init__(self, path_or_dict: PathLike | dict):
        if isinstance(path_or_dict, dict):
            self.path, data = "<instances>", path_or_dict
        else:
            self.path, data = str(path_or_dict), read_json(path_or_dict)
        p = self.path
        self.images: dict[int, dict] = {}
        for i, im in enumerate(_list_field(data, "images", p)):
            _require(im, ("id", "width", "height"), f"{p}: images[{i}]")
            self.images[im["id"]] = im
        self.cats: dict[int, dict] = {}
        for i, c in enumerate(_list_field(data, "categories", p)):
            _require(c, ("id", "name"), f"{p}: categories[{i}]")
            self.cats[c["id"]] = c
        self.anns: dict[int, dict] = {}
        self.anns_by_image: dict[int, list[dict]] = {i: [] for i in self.images}
        for i, a in enumerate(data.get("annotations", [])):  # image-info files (test sets) have none
            _require(a, ("id", "image_id", "category_id"), f"{p}: annotations[{i}]")
            if a["image_id"] not in self.images:
                raise DataError(f"{p}: annotations[{i}].image_id: unknown image id {a['image_id']}")
            if a["category_id"] not in self.cats:
                raise DataError(f"{p}: annotations[{i}].category_id: unknown category id {a['category_id']}")
            if "segmentation" not in a and "bbox" not in a:
                raise DataError(f"{p}: annotations[{i}]: neither 'segmentation' nor 'bbox'")
            self.anns[a["id"]] = a
            self.anns_by_image[a["image_id"]].append(a)

    @property
    def category_names(self) -> list[str]:
        """Category names ordered by category id (COCO ids are not contiguous)."""
        return [self.cats[k]["name"] for k in sorted(self.cats)]

    def category_name(self, ann: dict) -> str:
        return self.cats[ann["category_id"]]["name"]

    def ann_to_rle(self, ann: dict | int) -> dict:
        """The annotation's segmentation as compressed RLE (polygons, uncompressed and compressed RLE all
        accepted; a box-only annotation is rasterised from its bbox), as pycocotools' ``annToRLE``."""
        ann = self.anns[ann] if isinstance(ann, int) else ann
        im = self.images[ann["image_id"]]
        from regionvlm.data.geometry import segmentation_to_rle

        seg = ann.get("segmentation")
        if seg is None or (isinstance(seg, list) and len(seg) == 0):
            seg = bbox_to_polygon(ann["bbox"])
        return segmentation_to_rle(seg, im["height"], im["width"], where=f"{self.path}: annotations id={ann['id']}")

    def ann_to_mask(self, ann: dict | int) -> np.ndarray:
        """H×W bool mask of the annotation (pycocotools ``annToMask``)."""
        from pycocotools import mask as mask_utils

        return mask_utils.decode(self.ann_to_rle(ann)).astype(bool)


def bbox_to_polygon(bbox_xywh) -> list[list[float]]:
    """A COCO xywh box as a one-polygon segmentation (used for box-only annotations)."""
    x, y, w, h = (float(v) for v in bbox_xywh)
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


# -- RefCOCO / RefCOCO+ / RefCOCOg ----------------------------------------------------------------------------
_REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")


def read_refs(path: PathLike) -> list[dict]:
    """The ``refs(unc|umd|google).p`` pickle: a list of refs, each with its sentences.

    The ref's ``file_name`` (``COCO_train2014_<image_id>_<ann_id>.jpg``) is not a file on disk: use
    `refcoco_image_file(ref["image_id"])`. Pickles written by Python 2 need ``encoding="latin1"``.

    Read with `regionvlm.guards.load_plain_pickle`: the format holds lists, dicts, strings and numbers only, and
    a pickle that names anything else (a class, ``os.system``) is refused before anything in it is called.
    """
    from regionvlm.guards import load_plain_pickle

    try:
        with open(path, "rb") as f:
            refs = load_plain_pickle(f, encoding="latin1")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a refs pickle") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            MemoryError, RecursionError, OverflowError) as exc:  # the ways a crafted opcode stream fails
        raise DataError(f"{path}: not a refs pickle: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None
    if not isinstance(refs, list):
        raise DataError(f"{path}: expected a pickled list of refs, got {type(refs).__name__}")
    for i, r in enumerate(refs):
        _require(r, _REF_KEYS, f"{path}: refs[{i}]")
        if not isinstance(r["sentences"], list) or not r["sentences"]:
            raise DataError(f"{path}: refs[{i}].sentences: expected a non-empty list")
        for j, s in enumerate(r["sentences"]):
            _require(s, ("sent",), f"{path}: refs[{i}].sentences[{j}]")
    return refs


def refcoco_image_file(image_id: int, prefix: str = "COCO_train2014_") -> str:
    """The real image file of a RefCOCO* ref: ``COCO_train2014_%012d.jpg``."""
    return f"{prefix}{int(image_id):012d}.jpg"


# -- Visual Genome --------------------------------------------------------------------------------------------
def read_vg_regions(path: PathLike) -> list[dict]:
    """``region_descriptions.json``: ``[{"id": image_id, "regions": [{region_id, image_id, phrase, x, y, width,
    height}]}]``. Returned as read, each region checked for its fields."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of images with 'regions', got {type(data).__name__}")
    for i, entry in enumerate(data):
        _require(entry, ("regions",), f"{path}: [{i}]")
        for j, r in enumerate(entry["regions"]):
            _require(r, ("region_id", "phrase", "x", "y", "width", "height"), f"{path}: [{i}].regions[{j}]")
            if "image_id" not in r:
                if "id" not in entry:
                    raise DataError(f"{path}: [{i}].regions[{j}].image_id: missing field")
                r["image_id"] = entry["id"]
    return data


def read_vg_images(path: PathLike) -> dict[int, dict]:
    """``image_data.json`` → ``{image_id: image dict}``; older releases name the id ``id`` (normalised to
    ``image_id``)."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of images, got {type(data).__name__}")
    out = {}
    for i, im in enumerate(data):
        if not isinstance(im, dict):
            raise DataError(f"{path}: [{i}]: expected an object")
        if "image_id" not in im:
            if "id" not in im:
                raise DataError(f"{path}: [{i}].image_id: missing field (nor 'id')")
            im = {**im, "image_id": im["id"]}
        _require(im, ("width", "height"), f"{path}: [{i}]")
        out[im["image_id"]] = im
    return out


def read_split_ids(path: PathLike, split: str | None) -> set[int]:
    """A split file of image ids: a JSON list (the GRiT/DenseCap test split) or a DenseCap-style object
    ``{"train": [ids], "val": [...], "test": [...]}`` of which ``split`` is used."""
    data = read_json(path)
    if isinstance(data, dict):
        if split not in data:
            raise DataError(f"{path}: {split}: split not in the file (has {', '.join(map(str, data)) or 'no keys'})")
        data = data[split]
    if not isinstance(data, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in data):
        raise DataError(f"{path}: expected a JSON list of image ids")
    return set(data)


# -- POPE, LLaVA, conversations, question files --------------------------------------------------------------------
def read_pope(path: PathLike) -> list[dict]:
    """POPE questions (JSON lines ``{question_id, image, text, label}``); the label is checked."""
    rows = read_jsonl(path)
    for i, r in enumerate(rows):
        _require(r, ("question_id", "image", "text"), f"{path}: row {i + 1}")
        if "label" in r and r["label"] not in ("yes", "no"):
            raise DataError(f"{path}: row {i + 1}.label: expected 'yes' or 'no', got {r['label']!r}")
    return rows


def _check_conversations(conv: Any, where: str) -> None:
    if not isinstance(conv, list) or not conv:
        raise DataError(f"{where}.conversations: expected a non-empty list of turns")
    for j, turn in enumerate(conv):
        _require(turn, ("from", "value"), f"{where}.conversations[{j}]")
        if turn["from"] not in ("human", "gpt", "user", "assistant", "system"):
            raise DataError(f"{where}.conversations[{j}].from: unknown speaker {turn['from']!r}")
        if not isinstance(turn["value"], str):
            raise DataError(f"{where}.conversations[{j}].value: expected a string")


def read_llava(path: PathLike) -> list[dict]:
    """LLaVA conversation json (a list; ``image`` optional for text-only rows). A ``.jsonl`` file is read as
    JSON lines."""
    rows = read_jsonl(path) if str(path).endswith(".jsonl") else read_json(path)
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of conversations, got {type(rows).__name__}")
    for i, r in enumerate(rows):
        _require(r, ("conversations",), f"{path}: [{i}]")
        _check_conversations(r["conversations"], f"{path}: [{i}]")
    return rows


def read_conversations_jsonl(path: PathLike) -> list[dict]:
    """The general region conversation format (and datagen's output), JSON lines:
    ``{"id", "image", "regions": [{"bbox"|"segmentation"|"rle": ...}], "conversations": [...]}``."""
    rows = read_jsonl(path)
    for i, r in enumerate(rows):
        where = f"{path}: line {i + 1}"
        _require(r, ("conversations",), where)
        _check_conversations(r["conversations"], where)
        regions = r.get("regions", [])
        if not isinstance(regions, list):
            raise DataError(f"{where}.regions: expected a list")
        for j, reg in enumerate(regions):
            if not isinstance(reg, dict) or not ({"bbox", "segmentation", "rle", "mask"} & reg.keys()):
                raise DataError(f"{where}.regions[{j}]: expected an object with 'bbox', 'segmentation' or 'rle'")
    return rows


def read_jsonl_with_ids(path: PathLike, required: Iterable[str], check=None) -> list[dict]:
    """JSON lines of objects that each carry a unique ``id`` and the ``required`` fields (the spatial and DLC
    question files); ``check(row, where)`` adds the format's own field checks."""
    rows, seen = [], set()
    for lineno, row in iter_jsonl(path):
        where = f"{path}: line {lineno}"
        _require(row, ("id", *required), where)
        if check is not None:
            check(row, where)
        if str(row["id"]) in seen:
            raise DataError(f"{where}: duplicate id {row['id']!r}")
        seen.add(str(row["id"]))
        rows.append(row)
    return rows
