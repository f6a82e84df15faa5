"""Every metric against its reference implementation (called directly) or hand-checked answers: labels, captions,
semantic, coco_map and lengths in regionvlm/evaluation/, answer parsers (regionvlm/text/prompts.py, POPE's in
benchmarks/pope.py)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from regionvlm.benchmarks import pope

from regionvlm.evaluation import captions, coco_map, labels, lengths, semantic
from regionvlm.evaluation.collectors import PredictionCollector
from regionvlm.text import prompts

# ---- classification -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("The Hot-Dogs.", "hot dog"), ("a bus", "bus"), ("Buses", "bus"), ("skis", "skis"),
    ("traffic_lights", "traffic light"), ("  an Apple, ", "apple"), ("knives", "knife"), ("glasses", "glasses"),
])
def test_normalize_label(text, expected):
    assert labels.normalize_label(text) == expected


def test_exact_match_accuracy():
    assert labels.exact_match_accuracy(["Dogs.", "a cat", "car"], ["dog", "cat", "truck"]) == pytest.approx(200 / 3)


# ---- captions: pycocoevalcap called directly ----------------------------------------------------------------
REFS = {1: ["a man riding a red horse", "person on a horse"], 2: ["two dogs playing in the snow"],
        3: ["the blue car on the left", "a blue car"], 4: ["a small white cat sleeping"]}
HYPS = {1: "a man on a horse", 2: "", 3: "blue car at the left", 4: "a white cat is sleeping"}


@pytest.fixture(scope="module")
def caption_scores():
    """Ours and the reference pipeline, each run once (Java start-up is slow)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = tok.tokenize({k: [{"caption": v}] for k, v in HYPS.items()})
    with contextlib.redirect_stdout(io.StringIO()):
        ref = {f"BLEU-{i + 1}": 100 * b for i, b in enumerate(Bleu(4).compute_score(gts, res)[0])}
    ref["METEOR"] = 100 * captions.shared_meteor().compute_score(gts, res)[0]   # a plain pycocoevalcap Meteor()
    ref["ROUGE-L"] = 100 * Rouge().compute_score(gts, res)[0]
    ref["CIDEr"] = 100 * Cider().compute_score(gts, res)[0]
    ours, notes = captions.caption_metrics(REFS, HYPS)
    return ours, notes, ref


def test_caption_metrics_match_pycocoevalcap(caption_scores):
    ours, _, ref = caption_scores
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v, abs=1e-9), k
    assert 0 < ours["CIDEr"] and ours["BLEU-4"] < ours["BLEU-1"]


def test_spice_skipped_with_reason_when_jars_missing(caption_scores):
    ours, notes, _ = caption_scores
    reason = captions.spice_unavailable_reason()
    if reason is None:
        assert "SPICE" in ours
    else:
        assert "SPICE" not in ours and any(n.startswith("SPICE skipped:") and "\n" not in n for n in notes)


# ---- Osprey semantic similarity / IoU -----------------------------------------------------------------------
def test_osprey_cleaning_and_semantic_iou():
    assert semantic.osprey_clean_prediction("Category: hot dog.") == " hot dog "
    assert semantic.osprey_clean_category("hair_drier") == "hair drier"
    assert semantic.semantic_iou("red sports car", "sports car") == pytest.approx(2 / 3)
    assert semantic.semantic_iou("dog", "cat") == 0.0


def test_semantic_similarity_with_minilm():
    enc = semantic.default_encoder()
    e = enc.encode(["dog", "puppy", "airplane"])
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2
    s = semantic.semantic_scores(["dog", "a cat"], ["dog", "airplane"], enc)
    assert s["semantic_iou"] == pytest.approx(50.0)
    # the first pair is identical text: cosine 1 → mean = (100 + cos(cat, airplane)) / 2
    cos = float((enc.encode(["a cat"]) * enc.encode(["airplane"])).sum())
    assert s["semantic_similarity"] == pytest.approx((100 + 100 * cos) / 2, abs=1e-4)
    # an empty answer names nothing: 0, not the ~29 the empty string's embedding gives with any name
    assert float((enc.encode([""]) * enc.encode(["dog"])).sum()) > 0.1
    assert semantic.semantic_scores(["", "  "], ["dog", "airplane"], enc) == {"semantic_similarity": 0.0,
                                                                               "semantic_iou": 0.0}
    half = semantic.semantic_scores(["dog", ""], ["dog", "airplane"], enc)
    assert half["semantic_similarity"] == pytest.approx(50.0, abs=1e-4)


# ---- COCO mAP: pycocotools COCOeval called directly ---------------------------------------------------------
INSTANCES = {
    "images": [{"id": 1, "width": 100, "height": 100, "file_name": "1.jpg"},
               {"id": 2, "width": 100, "height": 100, "file_name": "2.jpg"}],
    "categories": [{"id": 1, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "traffic light"}],
    "annotations": [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0},
        {"id": 11, "image_id": 1, "category_id": 3, "bbox": [50, 50, 30, 20], "area": 600, "iscrowd": 0},
        {"id": 12, "image_id": 2, "category_id": 7, "bbox": [5, 5, 10, 40], "area": 400, "iscrowd": 0},
        {"id": 13, "image_id": 2, "category_id": 1, "bbox": [40, 40, 50, 50], "area": 2500, "iscrowd": 0},
    ],
}


def test_coco_map_matches_cocoeval(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from regionvlm.data.formats import CocoInstances

    path = tmp_path / "inst.json"
    path.write_text(json.dumps(INSTANCES))
    predicted = {10: 1, 11: 1, 12: 7, 13: 3}   # two of four right
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        dets = [{"image_id": gt.anns[a]["image_id"], "category_id": c, "bbox": gt.anns[a]["bbox"], "score": 1.0}
                for a, c in predicted.items()]
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    ours = coco_map.coco_region_map(CocoInstances(path), predicted)
    assert ours["mAP"] == pytest.approx(100 * ev.stats[0])
    assert ours["AP50"] == pytest.approx(100 * ev.stats[1])
    assert coco_map.coco_region_map(CocoInstances(path), {10: 1, 11: 3, 12: 7, 13: 1})["mAP"] == pytest.approx(100.0)
    assert coco_map.coco_region_map(CocoInstances(path), {})["mAP"] == 0.0


# ---- REC ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,n,expected", [
    ("Region [2].", 3, 1), ("region[1]", 3, 0), ("It is <region3>.", 3, 2), ("Region 2", 2, 1),
    ("Region [4].", 3, None), ("the dog", 3, None), ("Region [0]", 3, None),
])
def test_parse_region_index(text, n, expected):
    assert prompts.parse_region_index(text, n) == expected


# ---- POPE: hand-checked -------------------------------------------------------------------------------------
def test_pope_parse_as_official():
    assert pope.pope_parse("Yes, there is a dog.") == "yes"
    assert pope.pope_parse("No, there is not.") == "no"
    assert pope.pope_parse("There is no cat in the image.") == "no"
    assert pope.pope_parse("I think so. No.") == "yes"       # only the first sentence counts
    assert pope.pope_parse("Nope") == "yes"                   # whole words only, as the official script
    assert pope.pope_parse("NO") == "yes"                     # case-sensitive, as the official script
    assert pope.pope_parse("not,") == "no"                    # commas dropped before splitting


def test_pope_metrics_hand_checked():
    replies = ["Yes.", "Yes, a dog.", "No.", "There is not.", "Yes", "No, no dog."]
    truth = ["yes", "no", "yes", "no", "yes", "no"]
    # parsed: y y n n y n → TP=2 (0,4) FP=1 (1) FN=1 (2) TN=2 (3,5)
    got = pope.pope_metrics([pope.pope_parse(a) for a in replies], truth)
    assert got == pytest.approx({"accuracy": 400 / 6, "precision": 200 / 3, "recall": 200 / 3,
                                 "f1": 200 / 3, "yes_ratio": 50.0})
    assert pope.pope_metrics([], []) == {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0,
                                            "yes_ratio": 0.0}


# ---- accumulation across processes --------------------------------------------------------------------------
def test_prediction_collector_merges_ranks_and_drops_padding_duplicates():
    rank0, rank1 = PredictionCollector(), PredictionCollector()
    rank0.update([{"id": 1, "text": "ä dog"}, {"id": 2, "text": "cat"}])
    rank1.update([{"id": 3, "text": "car"}])
    rank1.update([{"id": 1, "text": "ä dog"}])     # DistributedSampler padding repeats a sample
    rank0.merge_state(rank1)
    rows = rank0.compute()
    assert sorted(r["id"] for r in rows) == [1, 2, 3]
    assert {r["id"]: r["text"] for r in rows}[1] == "ä dog"
    with pytest.warns(UserWarning):   # torchmetrics warns about compute() before update()
        assert PredictionCollector().compute() == []


# ---- spatial ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,metres", [
    ("It is 2.5 meters wide.", 2.5), ("about 48 cm", 0.48), ("10 inches", 0.254), ("3 feet", 0.9144),
    ("1,200 mm", 1.2), ("roughly 7", 7.0), ("no idea", None),
])
def test_parse_length(text, metres):
    got = lengths.parse_length_m(text)
    assert got == (None if metres is None else pytest.approx(metres))


def test_quantitative_success_and_yes_no():
    assert lengths.quantitative_success(1.25, 1.0)[0] and lengths.quantitative_success(0.75, 1.0)[0]
    ok, err = lengths.quantitative_success(1.3, 1.0)
    assert not ok and err == pytest.approx(0.3 / 1.0001)
    assert prompts.parse_yes_no("Yes, it is.") == "yes" and prompts.parse_yes_no("It is not.") == "no"
    assert prompts.parse_yes_no("Maybe") is None
