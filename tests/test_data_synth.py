"""The synthetic set: official formats read back by the real loaders, pixels agree with annotations; the
tokenizer; the `data` command; the mixture DataModule."""

import argparse
import hashlib
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from test_data_collate import TOK_DIR
from transformers import AutoTokenizer

from regionvlm.commands import data as data_cmd
from regionvlm.data import formats
from regionvlm.data.datamodule import MixtureSampler, RegionDataModule
from regionvlm.data.processing import ImageProcessor
from regionvlm.data.synth.benchmark_files import region_sentence
from regionvlm.data.synth.scenes import COLOURS
from regionvlm.data.synth.tokenizer import train_tiny_tokenizer
from regionvlm.processor import RegionProcessor
from regionvlm.registry import DATASETS, construct


def run_cmd(argv):
    parser = argparse.ArgumentParser()
    data_cmd.add_arguments(parser)
    return data_cmd.run(parser.parse_args(argv))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert run_cmd(["synth", "--out", str(out), "--n", "12", "--n-val", "4", "--seed", "3"]) == 0
    return out


def test_deterministic(synth, tmp_path):
    run_cmd(["synth", "--out", str(tmp_path), "--n", "12", "--n-val", "4", "--seed", "3"])
    for rel in ("annotations/instances_train.json", "refcocog/refs(umd).p", "images/synth_000005.png"):
        assert hashlib.md5((synth / rel).read_bytes()).digest() == hashlib.md5((tmp_path / rel).read_bytes()).digest()
    assert (synth / "README.md").exists()


def test_annotations_agree_with_pixels(synth):
    coco = formats.CocoInstances(synth / "annotations/instances_train.json")
    assert len(coco.images) == 12 and len(coco.category_names) == 20
    kinds, differs, small = Counter(), 0, 0
    for ann in coco.anns.values():
        im = coco.images[ann["image_id"]]
        pixels = np.asarray(Image.open(synth / "images" / im["file_name"]).convert("RGB")).astype(float)
        mask = coco.ann_to_mask(ann)
        assert mask.sum() == ann["area"] > 0
        colour = coco.cats[ann["category_id"]]["name"].split()[0]
        bright = pixels[mask].max(0)  # the undarkened pattern pixels carry the object's colour (± jitter)
        assert np.abs(bright - COLOURS[colour]).max() <= 13
        kinds[type(ann["segmentation"]).__name__] += 1
        _, _, w, h = ann["bbox"]
        differs += mask.sum() < 0.95 * w * h
        small += max(w, h) < 16
    assert kinds["list"] and differs and small  # polygons present, masks ≠ boxes, sub-patch objects


def test_loaders_read_every_file(synth):
    img = str(synth / "images")
    common = {"image_root": img, "train": False}
    sets = {
        "cls": {"type": "coco_instances", "ann_file": str(synth / "annotations/instances_val.json")},
        "cap": {"type": "refcoco", "refs_file": str(synth / "refcocog/refs(umd).p"),
                "instances_file": str(synth / "refcocog/instances.json"), "split": "val", "task": "caption"},
        "rec": {"type": "refcoco", "refs_file": str(synth / "refcocog/refs(umd).p"),
                "instances_file": str(synth / "refcocog/instances.json"), "split": "val", "task": "rec"},
        "vg": {"type": "vg_regions", "regions_file": str(synth / "vg/region_descriptions.json"),
               "images_file": str(synth / "vg/image_data.json"), "split_file": str(synth / "vg/densecap_splits.json"),
               "split": "val", "image_file": "url"},
        "pope": {"type": "pope", "path": str(synth / "pope/synth_pope_random_val.json")},
        "spatial": {"type": "conversations", "path": str(synth / "spatial/spatial_val.jsonl")},
        "llava": {"type": "llava", "path": str(synth / "llava/captions_val.json")},
        "sentences": {"type": "region_captions", "path": str(synth / "captions/region_sentences_val.json"),
                      "prompt": {"type": "sentence_caption"}},
    }
    proc = ImageProcessor(64)
    for name, node in sets.items():
        ds = DATASETS.build({**node, **common})
        assert len(ds) > 0, name
        out = proc.process_sample(ds[0])
        assert out["pixel_values"].shape == (3, 64, 64)
    refs = formats.read_refs(synth / "refcocog/refs(umd).p")
    assert {r["split"] for r in refs} == {"train", "val"}
    assert refs[0]["file_name"].endswith(f"_{refs[0]['ann_id']}.png")  # the RefCOCO quirk, mimicked
    assert any(" of the " in s["sent"] or "above" in s["sent"] or "below" in s["sent"]
               for r in refs for s in r["sentences"])
    labels = Counter(q["label"] for q in formats.read_pope(synth / "pope/synth_pope_random_val.json"))
    assert labels["yes"] == labels["no"] > 0


def test_tokenizer_roundtrip(tmp_path):
    train_tiny_tokenizer(tmp_path, vocab_size=400)
    for path in (tmp_path, TOK_DIR):  # a fresh one and the committed one
        tok = AutoTokenizer.from_pretrained(str(path))
        text = "the striped red circle left of the blue square — Zürich 東京 {}"
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids and tok.decode(ids) == text
        assert None not in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
        assert len(tok(" red circle", add_special_tokens=False)["input_ids"]) <= 2
        assert tok.convert_tokens_to_ids("<region_feat>") != tok.unk_token_id


def test_mixture_sampler_ratios():
    s = MixtureSampler([10, 1000], [3.0, 1.0], num_samples=400, seed=1)
    idx = list(s)
    assert len(idx) == 400 and sum(i < 10 for i in idx) == 300
    assert Counter(i for i in idx if i < 10).most_common(1)[0][1] == 30  # 30 full passes, no early repeats
    s.set_epoch(1)
    assert list(s) != idx and len(list(s)) == 400


def test_datamodule_from_config(synth):
    tok = AutoTokenizer.from_pretrained(str(TOK_DIR))
    img = str(synth / "images")
    cfg = {"train": [{"type": "coco_instances", "ann_file": str(synth / "annotations/instances_train.json"),
                      "image_root": img, "ratio": 3},
                     {"type": "conversations", "path": str(synth / "spatial/spatial_train.jsonl"), "image_root": img}],
           "val": [{"type": "pope", "path": str(synth / "pope/synth_pope_random_val.json"), "image_root": img}],
           "batch_size": 4, "samples_per_epoch": 16}
    processor = RegionProcessor(tok, image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, num_image_tokens=4,
                                template="plain", max_length=256)
    dm = construct(RegionDataModule, cfg, key_path="data", processor=processor)
    batches = list(dm.train_dataloader())
    assert len(batches) == 4 and sum(len(b) for b in batches) == 16
    b = batches[0]
    assert b.pixel_values.shape == (4, 3, 32, 32) and b.region_masks.shape[1:] == (32, 32)
    assert len(b.region_mentions) == (b.input_ids == tok.convert_tokens_to_ids("<region_feat>")).sum()
    val = next(iter(dm.val_dataloader()))
    assert val.labels is not None and len(val.region_mentions) == 0
    pred = next(iter(dm.predict_dataloader()))
    assert pred.labels is None and pred.targets[0]["answer"] in ("yes", "no")


def test_region_sentences_describe_their_object(synth):
    """One sentence per object, naming its colour, shape and fill pattern, and where it lies."""
    coco = formats.CocoInstances(synth / "annotations/instances_train.json")
    caps = formats.read_json(synth / "captions/region_sentences_train.json")
    assert len(caps["annotations"]) == len(coco.anns)
    for ann, cap in zip(sorted(coco.anns.values(), key=lambda a: a["id"]), caps["annotations"]):
        colour, shape = coco.cats[ann["category_id"]]["name"].split()
        text = cap["caption"]
        assert text.endswith(".") and len(text.split()) >= 8 and cap["bbox"] == ann["bbox"]
        assert f"{colour} {shape}" in text or f"{ann['attributes']['pattern']} {colour} {shape}" in text
        assert ann["attributes"]["pattern"] in text


def test_region_sentence_places_the_object():
    ann = {"id": 3, "bbox": [100, 2, 20, 20], "attributes": {"pattern": "dotted", "size": "small"}}
    assert region_sentence(ann, "red square", 128, 128) == \
        "This is a small red square with a dotted fill, in the top right of the image."
    ann = {"id": 4, "bbox": [54, 54, 20, 20], "attributes": {"pattern": "solid", "size": "medium"}}
    assert region_sentence(ann, "blue circle", 128, 128) == "A solid blue circle sits in the centre of the image."
