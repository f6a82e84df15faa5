"""Readers of the official files and the registered datasets, on small hand-written files."""

import json
import pickle

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from regionvlm.data import formats
from regionvlm.errors import DataError, RegistryError
from regionvlm.registry import DATASETS

POLY = [[2.0, 2.0, 14.0, 3.0, 9.0, 12.0]]
BLOB = np.zeros((16, 20), np.uint8)
BLOB[3:9, 10:18] = 1
RLE = mask_utils.encode(np.asfortranarray(BLOB))


def coco_dict():
    counts = RLE["counts"].decode()
    flat = BLOB.flatten(order="F")
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[-1], flat, [-1]])) != 0)).tolist()
    return {
        "images": [{"id": 7, "file_name": "a.png", "width": 20, "height": 16},
                   {"id": 9, "file_name": "b.png", "width": 20, "height": 16}],
        "annotations": [
            {"id": 101, "image_id": 7, "category_id": 18, "segmentation": POLY, "bbox": [2, 2, 12, 10], "area": 60,
             "iscrowd": 0},
            {"id": 102, "image_id": 7, "category_id": 1, "segmentation": {"size": [16, 20], "counts": counts},
             "bbox": [10, 3, 8, 6], "area": 48, "iscrowd": 0},
            {"id": 103, "image_id": 9, "category_id": 1, "segmentation": {"size": [16, 20], "counts": runs},
             "bbox": [10, 3, 8, 6], "area": 48, "iscrowd": 1},
            {"id": 104, "image_id": 9, "category_id": 18, "segmentation": [[1, 1, 3, 1, 3, 3]], "bbox": [1, 1, 2, 2],
             "area": 2, "iscrowd": 0}],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
    }


@pytest.fixture
def coco_file(tmp_path):
    path = tmp_path / "instances.json"
    formats.write_json(path, coco_dict())
    for name in ("a.png", "b.png"):
        Image.new("RGB", (20, 16), (10, 20, 30)).save(tmp_path / name)
    return path


def test_json_jsonl_readers_and_atomic_writers(tmp_path):
    formats.write_jsonl(tmp_path / "x.jsonl", [{"a": 1}, {"b": "é"}])
    assert formats.read_jsonl(tmp_path / "x.jsonl") == [{"a": 1}, {"b": "é"}]
    assert [p.name for p in tmp_path.iterdir()] == ["x.jsonl"]  # no temp file left
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 3: invalid JSON"):
        formats.read_jsonl(tmp_path / "bad.jsonl")
    (tmp_path / "list.jsonl").write_text("[1]\n")
    with pytest.raises(DataError, match="line 1: expected a JSON object"):
        formats.read_jsonl(tmp_path / "list.jsonl")
    (tmp_path / "bad.json").write_text('{\n "a": }')
    with pytest.raises(DataError, match="bad.json: line 2"):
        formats.read_json(tmp_path / "bad.json")
    with pytest.raises(DataError, match="file not found"):
        formats.read_json(tmp_path / "nope.json")


def test_coco_instances_index_and_masks_equal_pycocotools(coco_file):
    coco = formats.CocoInstances(coco_file)
    assert coco.category_names == ["person", "dog"]  # ordered by id
    assert [a["id"] for a in coco.anns_by_image[7]] == [101, 102]
    ref = COCO(str(coco_file))
    for ann_id in (101, 102, 103, 104):
        np.testing.assert_array_equal(coco.ann_to_mask(ann_id), ref.annToMask(ref.anns[ann_id]).astype(bool))
    np.testing.assert_array_equal(coco.ann_to_mask(102), BLOB.astype(bool))
    np.testing.assert_array_equal(coco.ann_to_mask(103), BLOB.astype(bool))


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["annotations"][0].pop("image_id"), r"annotations\[0\].image_id: missing field"),
    (lambda d: d["annotations"][1].update(category_id=99), r"annotations\[1\].category_id: unknown category id 99"),
    (lambda d: d.pop("images"), "images: missing field"),
])
def test_coco_instances_errors(mutate, message):
    d = coco_dict()
    mutate(d)
    with pytest.raises(DataError, match=message):
        formats.CocoInstances(d)


def test_coco_dataset(coco_file):
    ds = DATASETS.build({"type": "coco_instances", "ann_file": str(coco_file), "image_root": str(coco_file.parent),
                         "min_area": 10, "train": False})
    assert [s["target"]["ann_id"] for s in ds] == [101, 102]  # crowd 103 skipped, 104 below min_area
    s = ds[1]
    assert s["image"].endswith("a.png") and s["target"]["answer"] == "person"
    assert s["conversations"][1] == {"from": "gpt", "value": "person"}
    assert "<region1>" in s["conversations"][0]["value"] and s["conversations"][0]["value"].startswith("<image>\n")
    np.testing.assert_array_equal(s["regions"].to_masks()[0], BLOB.astype(bool))
    with pytest.raises(RegistryError, match="min_aera: unexpected key.*did you mean 'min_area'"):
        DATASETS.build({"type": "coco_instances", "ann_file": str(coco_file), "min_aera": 1})
    named = DATASETS.build({"type": "coco_instances", "ann_file": str(coco_file),
                            "prompt": {"type": "region_classification", "vocabulary": "COCO-80"}, "train": False})
    assert named[0]["conversations"][0]["value"].endswith("Answer the question using COCO-80 category names.")


# -- RefCOCO: a hand-checked refs pickle ---------------------------------------------------------------------------
REFS = [
    {"ref_id": 0, "ann_id": 102, "image_id": 7, "split": "train", "category_id": 1,
     "file_name": "COCO_train2014_000000000007_102.jpg", "sent_ids": [10, 11],
     "sentences": [{"sent_id": 10, "sent": "the person on the right", "raw": "The person on the right.",
                    "tokens": ["the", "person", "on", "the", "right"]},
                   {"sent_id": 11, "sent": "man", "raw": "man", "tokens": ["man"]}]},
    {"ref_id": 1, "ann_id": 101, "image_id": 7, "split": "val", "category_id": 18,
     "file_name": "COCO_train2014_000000000007_101.jpg", "sent_ids": [12],
     "sentences": [{"sent_id": 12, "sent": "dog", "raw": "dog", "tokens": ["dog"]}]},
]


@pytest.fixture
def refs_file(tmp_path, coco_file):
    path = tmp_path / "refs(umd).p"
    path.write_bytes(pickle.dumps(REFS, protocol=2))
    return path


def test_read_refs_and_image_file(refs_file, tmp_path):
    refs = formats.read_refs(refs_file)
    assert [r["ref_id"] for r in refs] == [0, 1] and refs[0]["sentences"][1]["sent"] == "man"
    assert formats.refcoco_image_file(7) == "COCO_train2014_000000000007.jpg"
    (tmp_path / "bad.p").write_bytes(pickle.dumps([{"ref_id": 0}]))
    with pytest.raises(DataError, match=r"refs\[0\].ann_id: missing field"):
        formats.read_refs(tmp_path / "bad.p")
    (tmp_path / "junk.p").write_bytes(b"junk")
    with pytest.raises(DataError, match="not a refs pickle"):
        formats.read_refs(tmp_path / "junk.p")


def test_refcoco_caption_and_rec(refs_file, coco_file):
    common = {"type": "refcoco", "refs_file": str(refs_file), "instances_file": str(coco_file), "train": False}
    cap = DATASETS.build({**common, "split": "train", "task": "caption"})
    assert len(cap) == 2 and [s["conversations"][1]["value"] for s in cap] == ["the person on the right", "man"]
    assert cap[0]["id"] == "refcoco-0-10" and cap[0]["image"] == "a.png"  # image from instances, not the quirk
    per_ref = DATASETS.build({**common, "split": "train", "task": "caption", "per": "ref"})
    assert len(per_ref) == 1 and per_ref[0]["target"]["captions"] == ["the person on the right", "man"]
    rec = DATASETS.build({**common, "split": "val", "task": "rec"})
    s = rec[0]
    # candidates = image 7's annotations by id (101, 102); the ref points at 101 → Region [1].
    assert s["target"]["candidate_ann_ids"] == [101, 102] and s["conversations"][1]["value"] == "Region [1]."
    assert "<region1>, <region2>" in s["conversations"][0]["value"] and '"dog"' in s["conversations"][0]["value"]
    assert s["conversations"][0]["value"].endswith("Answer the question using the template Region [x].")
    assert len(s["regions"]) == 2 and s["id"] == "refcoco-12"
    with pytest.raises(DataError, match=r"refs\(umd\).p: no refs in split 'test'"):
        DATASETS.build({**common, "split": "test", "task": "rec"})


def test_refcoco_rec_candidates_leave_crowd_regions_out(tmp_path):
    """One rule for training and benchmarks: crowd annotations are no candidates, unless referred to."""
    data = coco_dict()
    data["annotations"][2]["image_id"] = 7          # crowd 103 now shares image 7 with 101 and 102
    formats.write_json(tmp_path / "instances.json", data)
    refs = [{**REFS[1], "split": "val"}, {**REFS[1], "ref_id": 2, "ann_id": 103, "sentences": [{"sent_id": 13,
                                                                                                  "sent": "crowd"}]}]
    (tmp_path / "refs.p").write_bytes(pickle.dumps(refs, protocol=2))
    rec = DATASETS.build({"type": "refcoco", "refs_file": str(tmp_path / "refs.p"), "split": "val", "task": "rec",
                          "instances_file": str(tmp_path / "instances.json"), "train": False})
    assert [s["target"]["candidate_ann_ids"] for s in rec] == [[101, 102], [101, 102, 103]]
    assert [s["target"]["answer"] for s in rec] == ["Region [1].", "Region [3]."]


def test_refcoco_rec_with_proposals(refs_file, coco_file, tmp_path):
    props = [{"image_id": 7, "bbox": [9, 3, 9, 6], "score": 0.9}, {"image_id": 7, "bbox": [2, 2, 12, 10], "score": 0.5}]
    formats.write_json(tmp_path / "props.json", props)
    common = {"type": "refcoco", "refs_file": str(refs_file), "instances_file": str(coco_file), "task": "rec",
              "proposals_file": str(tmp_path / "props.json"), "train": False}
    assert DATASETS.build({**common, "split": "val"})[0]["conversations"][1]["value"] == "Region [2]."
    formats.write_json(tmp_path / "props.json", props[:1])
    assert DATASETS.build({**common, "split": "val"})[0]["conversations"][1]["value"] == \
        "No corresponding options found."


def test_vg_readers_and_dataset(tmp_path):
    regions = [{"id": 5, "regions": [{"region_id": 1, "image_id": 5, "phrase": "a red ball ", "x": 1, "y": 2,
                                      "width": 4, "height": 3},
                                     {"region_id": 2, "phrase": "sky", "x": 0, "y": 0, "width": 9, "height": 2}]}]
    images = [{"id": 5, "width": 10, "height": 8, "url": "https://x/VG_100K/5.jpg", "coco_id": None}]
    formats.write_json(tmp_path / "region_descriptions.json", regions)
    formats.write_json(tmp_path / "image_data.json", images)
    formats.write_json(tmp_path / "split.json", {"train": [5], "test": []})
    assert formats.read_vg_images(tmp_path / "image_data.json")[5]["image_id"] == 5  # old 'id' key
    assert formats.read_vg_regions(tmp_path / "region_descriptions.json")[0]["regions"][1]["image_id"] == 5
    ds = DATASETS.build({"type": "vg_regions", "regions_file": str(tmp_path / "region_descriptions.json"),
                         "images_file": str(tmp_path / "image_data.json"), "split_file": str(tmp_path / "split.json"),
                         "split": "train", "image_root": "/vg", "train": False})
    s = ds[0]
    assert s["image"] == "/vg/5.jpg" and s["conversations"][1]["value"] == "a red ball"
    np.testing.assert_allclose(s["regions"].to_boxes(), [[1, 2, 5, 5]])
    assert s["target"] == {"region_id": 1, "captions": ["a red ball"]}
    # no image_data.json: the size comes from the decoded image; a list-shaped split file (GRiT's test split)
    formats.write_json(tmp_path / "test.json", [5])
    bare = DATASETS.build({"type": "vg_regions", "regions_file": str(tmp_path / "region_descriptions.json"),
                           "split_file": str(tmp_path / "test.json"), "image_file": "vg_{image_id}_{region_id}.jpg"})
    assert [s["image"] for s in bare] == ["vg_5_1.jpg", "vg_5_2.jpg"] and bare[0]["regions"].image_size is None
    with pytest.raises(DataError, match=r"split.json: val: split not in the file \(has train, test\)"):
        DATASETS.build({"type": "vg_regions", "regions_file": str(tmp_path / "region_descriptions.json"),
                        "split_file": str(tmp_path / "split.json"), "split": "val"})
    formats.write_json(tmp_path / "bad.json", [{"id": 5, "regions": [{"region_id": 1, "x": 0}]}])
    with pytest.raises(DataError, match=r"bad.json: \[0\].regions\[0\].phrase: missing field"):
        formats.read_vg_regions(tmp_path / "bad.json")


def test_pope_llava_conversations(tmp_path):
    (tmp_path / "pope.json").write_text(
        '{"question_id": 1, "image": "COCO_val2014_000000000042.jpg", "text": "Is there a dog in the image?", '
        '"label": "yes"}\n{"question_id": 2, "image": "x.jpg", "text": "Is there a cat?", "label": "no"}\n')
    pope = DATASETS.build({"type": "pope", "path": str(tmp_path / "pope.json"), "image_root": "/coco", "train": False})
    assert pope[0]["image"] == "/coco/COCO_val2014_000000000042.jpg" and pope[1]["target"] == {
        "question_id": 2, "split": "pope", "answer": "no"} and pope[1]["id"] == "pope-pope-2"
    assert pope[0]["conversations"][0]["value"].startswith("<image>\nIs there a dog in the image?")
    (tmp_path / "badpope.json").write_text('{"question_id": 1, "image": "a", "text": "b", "label": "maybe"}\n')
    with pytest.raises(DataError, match="row 1.label"):
        formats.read_pope(tmp_path / "badpope.json")

    llava = [{"id": "a", "image": "x/1.jpg", "conversations": [{"from": "human", "value": "<image>\nHi"},
                                                              {"from": "gpt", "value": "Hello"}]},
             {"id": "t", "conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}]
    formats.write_json(tmp_path / "llava.json", llava)
    ds = DATASETS.build({"type": "llava", "path": str(tmp_path / "llava.json"), "image_root": "/img"})
    assert ds[0]["image"] == "/img/x/1.jpg" and ds[1]["image"] is None and len(ds[1]["regions"]) == 0

    rows = [{"id": "c1", "image": "1.jpg", "regions": [{"bbox": [1, 1, 4, 4]}, {"segmentation": POLY}],
             "conversations": [{"from": "human", "value": "<image>\nWhat is <region1>?"},
                               {"from": "gpt", "value": "a"},
                               {"from": "human", "value": "And <region2>?"}, {"from": "gpt", "value": "b"}]}]
    formats.write_jsonl(tmp_path / "conv.jsonl", rows)
    conv = DATASETS.build({"type": "conversations", "path": str(tmp_path / "conv.jsonl")})
    assert conv[0]["regions"].kinds == ["box", "polygon"] and len(conv[0]["conversations"]) == 4
    (tmp_path / "badconv.jsonl").write_text(json.dumps({"id": 1, "conversations": [{"from": "bot", "value": "x"}]}))
    with pytest.raises(DataError, match=r"line 1.conversations\[0\].from: unknown speaker"):
        formats.read_conversations_jsonl(tmp_path / "badconv.jsonl")


def test_spatial_and_dlc_question_files(tmp_path):
    spatial = [{"id": 7, "image": "1.png", "regions": [{"bbox": [1, 1, 4, 4]}, {"bbox": [5, 5, 2, 2]}],
                "question": "Which is more to the left, <region1> or <region2>?", "answer": "Region [1].",
                "qa_info": {"type": "qualitative", "category": "left_choice", "label": 1}}]
    formats.write_jsonl(tmp_path / "spatial.jsonl", spatial)
    ds = DATASETS.build({"type": "spatial_qa", "path": str(tmp_path / "spatial.jsonl"), "image_root": "/s",
                         "train": False})
    s = ds[0]
    assert s["id"] == "spatial-7" and s["image"] == "/s/1.png" and s["regions"].kinds == ["box", "box"]
    assert s["conversations"] == [
        {"from": "human", "value": "<image>\nWhich is more to the left, <region1> or <region2>? "
                                   "Answer the question using the template Region [x]."},
        {"from": "gpt", "value": "Region [1]."}]
    formats.write_jsonl(tmp_path / "bad.jsonl", [{**spatial[0], "qa_info": {"category": "left_choice", "label": 3}}])
    with pytest.raises(DataError, match=r"bad.jsonl: line 1.qa_info.label: expected a region number 1..2"):
        DATASETS.build({"type": "spatial_qa", "path": str(tmp_path / "bad.jsonl")})
    formats.write_jsonl(tmp_path / "dup.jsonl", spatial * 2)
    with pytest.raises(DataError, match=r"dup.jsonl: line 2: duplicate id 7"):
        DATASETS.build({"type": "spatial_qa", "path": str(tmp_path / "dup.jsonl")})

    dlc = [{"id": 3, "image": "2.png", "regions": [{"bbox": [0, 0, 3, 3]}], "class_name": "red circle",
            "questions": [{"type": "positive", "question": "Colour?", "choices": [{"text": "red", "score": 1}]}]}]
    formats.write_jsonl(tmp_path / "dlc.jsonl", dlc)
    d = DATASETS.build({"type": "dlc", "path": str(tmp_path / "dlc.jsonl"), "train": False})[0]
    assert len(d["conversations"]) == 1 and d["target"] == {"id": 3, "class_name": "red circle", "answer": None}
    formats.write_jsonl(tmp_path / "dlc.jsonl", [{**dlc[0], "caption": "A red circle."}])
    assert DATASETS.build({"type": "dlc", "path": str(tmp_path / "dlc.jsonl")})[0]["conversations"][1] == \
        {"from": "gpt", "value": "A red circle."}
    formats.write_jsonl(tmp_path / "dlc.jsonl", [{**dlc[0], "questions": [{"type": "neutral"}]}])
    with pytest.raises(DataError, match=r"line 1.questions\[0\].type: expected 'positive' or 'negative'"):
        DATASETS.build({"type": "dlc", "path": str(tmp_path / "dlc.jsonl")})
