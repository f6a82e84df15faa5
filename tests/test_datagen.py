"""regionvlm datagen, stage by stage: sources, selection, close-ups, filters, captioners, chunks and merge, and
every drop reason counted on a hand-made COCO set whose answers are known."""

import json

import numpy as np
import pytest
from PIL import Image

from regionvlm.data.structures import Regions
from regionvlm.datagen import filters
from regionvlm.datagen.crops import close_up, crop_window
from regionvlm.datagen.job import check_complete, read_chunks, write_chunk
from regionvlm.datagen.selection import select_regions
from regionvlm.datagen.settings import CropSettings, FilterSettings, SelectionSettings, parse_settings
from regionvlm.datagen.sources import SourceImage, SourceRegion, read_sources, region_dict
from regionvlm.errors import ConfigError, DataError
from regionvlm.registry import CAPTIONERS, JUDGES


def _region(i, area=100.0, crowd=False, name="cat"):
    return SourceRegion(id=f"r{i}", item=("box", [0, 0, 10, 10]), class_name=name, area=area, crowd=crowd)


# -- selection -------------------------------------------------------------------------------------------------
def test_selection_counts_each_reason_and_is_deterministic_per_image():
    images = [SourceImage("a.png", "a.png", (20, 20), [_region(0, crowd=True), _region(1, area=5), _region(2, name="dog"),
                                                       *[_region(k) for k in range(3, 9)]]),
              SourceImage("b.png", "b.png", (20, 20), [_region(10, crowd=True)])]
    s = SelectionSettings(min_area=10, exclude_classes=["DOG"], max_per_image=4)
    selected, drops = select_regions(images, s, seed=0)
    assert drops == {"crowd": 2, "area": 1, "class": 1, "max_per_image": 2}
    assert [im.key for im in selected] == ["a.png"]  # b.png keeps no region
    ids = [r.id for r in selected[0].regions]
    assert len(ids) == 4 and ids == sorted(ids, key=lambda x: int(x[1:]))  # annotation order kept
    # the draw depends on the seed and the image alone, not on which other images are in the job (shards)
    assert [r.id for r in select_regions(images[:1], s, seed=0)[0][0].regions] == ids
    draws = {tuple(r.id for r in select_regions(images, s, seed=k)[0][0].regions) for k in range(8)}
    assert len(draws) > 1
    only_cats, drops = select_regions(images, SelectionSettings(skip_crowd=False, classes=["cat"]), seed=0)
    assert drops == {"class": 1} and len(only_cats[0].regions) == 8


# -- close-ups -------------------------------------------------------------------------------------------------
def test_crop_window_grows_the_box_by_the_context_margin_and_min_size():
    s = CropSettings(context=0.5, min_size=32)
    # 20×10 box centred at (20, 15): half-width 20·1.0 = 20, half-height max(10·1.0, 16) = 16, clipped at 0
    assert crop_window(np.array([10, 10, 30, 20]), 100, 100, s) == (0, 0, 40, 31)
    assert crop_window(np.array([40, 40, 60, 60]), 100, 100, CropSettings(context=0.0, min_size=0)) == (40, 40, 60, 60)
    assert crop_window(np.array([90, 90, 100, 100]), 100, 100, s) == (79, 79, 100, 100)


def test_close_up_dims_everything_outside_the_mask():
    arr = np.full((40, 40, 3), 200, np.uint8)
    region = Regions([("box", [10, 10, 20, 20])], (40, 40))
    crop, local = close_up(Image.fromarray(arr), region, CropSettings(context=0.5, min_size=0, highlight="dim",
                                                                      dim=0.5))
    assert crop.size == (20, 20) and local.to_boxes()[0].tolist() == [5, 5, 15, 15]
    out = np.asarray(crop)
    assert (out[5:15, 5:15] == 200).all() and (out[:5] == 100).all() and (out[:, 15:] == 100).all()
    plain, _ = close_up(Image.fromarray(arr), region, CropSettings(context=0.5, min_size=0))
    assert (np.asarray(plain) == 200).all()


# -- filters ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("caption,reason", [
    ("", "empty"), ("a cat", "too_short"), ("cat " * 11, "too_long"),
    ("I'm sorry, I cannot see a cat there", "refusal"), ("a small brown dog on grass", "no_class_mention"),
    ("two tabby cats sleep on a sofa", None), ("a kitty sleeping on a sofa", None),
    ("the global caption about a cat", "near_duplicate")])
def test_each_rule_gives_its_reason(caption, reason):
    s = FilterSettings(min_words=3, max_words=10, synonyms={"cat": ["kitty"]}, max_similarity=0.8)
    assert filters.rule_failure(caption, "cat", ["The global caption about a cat."], s) == reason


def test_class_phrases_read_lvis_names_and_whole_words():
    assert filters.class_phrases("car_(automobile)", {}) == ["car", "cars", "cares"]
    assert filters.mentions("Two cars parked.", filters.class_phrases("car_(automobile)", {}))
    assert not filters.mentions("a scarf", ["car"])
    assert filters.judge_says_yes("Yes, it does.") and not filters.judge_says_yes("No. yes")


# -- sources ---------------------------------------------------------------------------------------------------
def test_region_dicts_read_back_as_the_same_masks():
    h, w = 30, 40
    mask = np.zeros((h, w), bool)
    mask[3:9, 5:20] = True
    regions = Regions([("box", [1, 2, 11, 22]), ("polygon", [[5, 5, 25, 5, 25, 20]]), ("mask", mask)], (h, w))
    rows = [region_dict(item) for item in regions.items]
    json.dumps(rows)  # JSON-serialisable
    back = Regions.from_dicts(rows, (h, w))
    assert (back.to_masks() == regions.to_masks()).all()


def _write_scene(tmp_path, n_images=3, missing=()):
    """A hand-made COCO set: images of size 64×64 and annotations as given per test."""
    (tmp_path / "images").mkdir(exist_ok=True)
    images = []
    for i in range(1, n_images + 1):
        name = f"im{i}.png"
        if i not in missing:
            Image.fromarray(np.full((64, 64, 3), 30 * i, np.uint8)).save(tmp_path / "images" / name)
        images.append({"id": i, "file_name": name, "height": 64, "width": 64})
    return images


def _coco(tmp_path, images, anns, categories):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return str(path)


def _ann(i, image_id, cat, box=(4, 4, 20, 20), crowd=0):
    x, y, w, h = box
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": list(box), "area": float(w * h),
            "iscrowd": crowd, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}


def test_sources_group_regions_by_image_across_datasets(tmp_path):
    images = _write_scene(tmp_path, 2)
    ann_file = _coco(tmp_path, images, [_ann(1, 1, 1), _ann(2, 2, 1), _ann(3, 1, 2, crowd=1)],
                     [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}])
    conv = tmp_path / "conv.jsonl"
    conv.write_text(json.dumps({"id": "c1", "image": "im1.png", "height": 64, "width": 64,
                                "regions": [{"bbox": [0, 0, 8, 8]}, {"bbox": [8, 8, 8, 8]}],
                                "conversations": [{"from": "human", "value": "<image>\nhi"}]}) + "\n")
    root = str(tmp_path / "images")
    got = read_sources([{"type": "coco_instances", "ann_file": ann_file, "image_root": root, "skip_crowd": False},
                        {"type": "conversations", "path": str(conv), "image_root": root}])
    assert [im.key for im in got] == [f"{root}/im1.png", f"{root}/im2.png"]
    assert [(r.id, r.class_name, r.crowd, r.area) for r in got[0].regions] == [
        ("0/coco-1", "cat", False, 400.0), ("0/coco-3", "dog", True, 400.0), ("1/c1#1", None, False, 64.0),
        ("1/c1#2", None, False, 64.0)]


# -- settings and chunks ---------------------------------------------------------------------------------------
def test_settings_errors_name_the_key():
    base = {"sources": [{"type": "coco_instances", "ann_file": "x"}], "captioner": {"type": "template"}}
    with pytest.raises(ConfigError, match=r"datagen\.selection\.max_per_img: unexpected key.*max_per_image"):
        parse_settings({"datagen": {**base, "selection": {"max_per_img": 2}}})
    with pytest.raises(ConfigError, match=r"datagen\.shard: expected 0 ≤ shard < num_shards=2, got 2"):
        parse_settings({"datagen": {**base, "shard": 2, "num_shards": 2}})
    with pytest.raises(ConfigError, match=r"datagen\.seed: is set by the code"):
        parse_settings({"datagen": {**base, "seed": 3}})
    s = parse_settings({"datagen": {**base, "prompts": {"global": "Say it."}}, "output": {"root": "r", "name": "n"}})
    assert s.prompts.global_ == "Say it." and s.output.dir == "r/n"


def test_chunks_hold_each_image_once(tmp_path):
    im = SourceImage("a.png", "a.png", (4, 4), [_region(0)])
    rec = {"index": 0, "key": "a.png", "regions": [{"id": "r0"}]}
    write_chunk(tmp_path, [rec])
    assert check_complete(read_chunks(tmp_path), [im, im]) == [1]
    write_chunk(tmp_path, [rec, {**rec, "index": 1}])  # a second chunk repeating image 0
    with pytest.raises(DataError, match="also in 000000000-000000000.jsonl"):
        read_chunks(tmp_path)
    other = SourceImage("b.png", "b.png", (4, 4), [_region(0)])
    (tmp_path / "chunks" / "000000000-000000001.jsonl").unlink()
    with pytest.raises(DataError, match="use another datagen.output.dir"):
        check_complete(read_chunks(tmp_path), [other])


# -- every drop reason counted ---------------------------------------------------------------------------------
# image 1 holds the first four classes, image 2 the last four; "dup" repeats the kept "cat" caption of image 1
SCRIPT = {"cat": "a tabby cat dup sleeping on a red sofa", "empty": "", "short": "a short",
          "dup": "a tabby cat dup sleeping on a red sofa", "long": "a long caption " * 10,
          "refuse": "I'm sorry, I cannot describe the refuse here", "nomention": "a wooden table with some books",
          "judged": "a striped judged animal in the grass"}


@CAPTIONERS.register("test_scripted")
class ScriptedCaptioner:
    """Test captioner: a fixed caption per class name."""

    def caption(self, requests):
        return ["an image" if r["stage"] == "global" else SCRIPT[r["class_name"]] for r in requests]


@JUDGES.register("test_no_to_judged")
def no_to_judged():
    """Test judge: says no when the caption mentions 'judged'."""
    return lambda prompts: ["no" if "judged" in p.split("Description:")[1] else "yes" for p in prompts]


def test_every_drop_reason_is_counted(tmp_path):
    from regionvlm.datagen.runner import run_datagen

    images = _write_scene(tmp_path, 4, missing=(4,))
    names = list(SCRIPT)
    cats = [{"id": k + 1, "name": n} for k, n in enumerate([*names, "excluded"])]
    cat = {n: k + 1 for k, n in enumerate([*names, "excluded"])}
    anns = [_ann(k + 1, 1, cat[n], box=(k, k, 20, 20)) for k, n in enumerate(names[:4])]
    anns += [_ann(10 + k, 2, cat[n], box=(k, k, 20, 20)) for k, n in enumerate(names[4:])]
    anns += [_ann(20, 3, cat["cat"], crowd=1), _ann(21, 3, cat["cat"], box=(1, 1, 2, 2)),
             _ann(22, 3, cat["excluded"]), _ann(23, 4, cat["cat"])]
    anns += [_ann(30 + k, 3, cat["cat"], box=(k, 0, 10, 10)) for k in range(5)]  # 5 cats: 4 kept, 1 over max
    ann_file = _coco(tmp_path, images, anns, cats)
    config = {"seed": 0, "trainer": {"accelerator": "cpu", "devices": 1},
              "datagen": {"sources": [{"type": "coco_instances", "ann_file": ann_file, "skip_crowd": False,
                                       "image_root": str(tmp_path / "images")}],
                          "selection": {"min_area": 10, "exclude_classes": ["excluded"], "max_per_image": 4},
                          "captioner": {"type": "test_scripted"}, "judge": {"type": "test_no_to_judged"},
                          "filters": {"max_words": 20, "max_similarity": 0.9},
                          "output": {"dir": str(tmp_path / "out")}, "gallery": 2}}
    report = run_datagen(config)
    # image 3's cats are all captioned alike: the first is kept, the other three are near-duplicates of it
    assert report["dropped"] == {"crowd": 1, "area": 1, "class": 1, "max_per_image": 1, "image_error": 1,
                                 "empty": 1, "too_short": 1, "too_long": 1, "refusal": 1, "no_class_mention": 1,
                                 "near_duplicate": 1 + 3, "judge": 1}
    assert report["stages"]["sources"]["regions"] == len(anns)
    assert report["stages"]["output"]["regions"] + sum(report["dropped"].values()) == len(anns)
    rows = [json.loads(line) for line in (tmp_path / "out" / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["id"] == "0/coco-1" and rows[1]["id"].startswith("0/coco-3")
    for name in ("report.json", "caption_lengths.png", "gallery.png"):
        assert (tmp_path / "out" / "report" / name).is_file()


def test_template_captioner_names_a_colour_once():
    from regionvlm.datagen.captioners import TemplateCaptioner

    image = Image.new("RGB", (40, 40), (220, 30, 30))
    regions = Regions.from_dicts([{"bbox": [0, 0, 20, 20]}], (40, 40))
    ask = {"image": image, "regions": regions, "stage": "region"}
    captioner = TemplateCaptioner()
    assert captioner.caption([{**ask, "class_name": "red circle"}, {**ask, "class_name": "circle"}]) == [
        "a medium red circle, seen in the close-up.", "a medium red circle, seen in the close-up."]
