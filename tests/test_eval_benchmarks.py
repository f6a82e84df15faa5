"""Benchmarks on the synthetic set (official formats): samples, known-answer scores, eval path == score path."""

from __future__ import annotations

import json

import pytest

from regionvlm.data.structures import Regions
from regionvlm.errors import ConfigError, DataError
from regionvlm.evaluation.benchmark import benchmark_yaml, load_benchmark
from regionvlm.evaluation.predictions import write_predictions
from regionvlm.registry import BENCHMARKS

NAMES = ["coco_cls", "refcocog_caption", "refcocog_rec", "vg_caption", "pope", "spatial", "dlc", "lvis_cls",
         "paco_cls"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from regionvlm.data.synth.writers import write_synthetic

    root = tmp_path_factory.mktemp("synth")
    return write_synthetic(root, n_train=2, n_val=4)   # also writes the spatial and dlc benchmark files


def annotations_for(name, p):
    dlc = p["dlc_bench"]
    return {"coco_cls": [p["instances_val"]], "refcocog_caption": [p["refcocog_captions_val"]],
            "refcocog_rec": [p["refcocog_refs"], p["refcocog_instances"]],
            "vg_caption": [p["vg_test_caption"]], "pope": [p["pope_val"]],
            "spatial": [p["spatialrgpt_bench"]],
            "dlc": [dlc / "annotations.json", dlc / "qa.json", dlc / "class_names.json"],
            "lvis_cls": [p["osprey_val"]], "paco_cls": [p["osprey_val"]]}[name]


def bench(name, data, **kw):
    kw.setdefault("images", str(data["images"]))
    if name == "vg_caption" and kw.get("format") == "region_descriptions":
        kw.setdefault("split", "val")
        return load_benchmark(name, annotations=[str(data["vg_regions"]), str(data["vg_splits"])], **kw)
    if name == "refcocog_caption" and kw.get("per") == "object":
        return load_benchmark(name, annotations=[str(data["refcocog_refs"]), str(data["refcocog_instances"])], **kw)
    return load_benchmark(name, annotations=[str(a) for a in annotations_for(name, data)], **kw)


def test_registered_with_yaml():
    assert set(NAMES) <= set(BENCHMARKS.names())
    for name in NAMES:
        assert benchmark_yaml(name) is not None, name


@pytest.mark.parametrize("name", NAMES)
def test_samples_follow_the_raw_sample_contract(name, data):
    b = bench(name, data)
    samples = b.samples()
    assert samples, name
    for s in samples[:5]:
        assert isinstance(s["regions"], Regions)
        prompt = s["conversations"][0]["value"]
        assert s["conversations"][0]["from"] == "human" and prompt.startswith("<image>\n")
        mentioned = {int(k) for k in __import__("re").findall(r"<region(\d+)>", prompt)}
        assert mentioned <= set(range(1, len(s["regions"]) + 1)) and (mentioned or name == "pope"), prompt
        json.dumps(s["target"])
    assert len(b.reference_ids()) == len(set(b.reference_ids())) == len(samples)


def human(sample):
    return sample["conversations"][0]["value"]


def dataset_node(name, p):
    """The dataset node each benchmark stands for, written out by hand (the one-sample-path claim)."""
    refs = {"refs_file": str(p["refcocog_refs"]), "instances_file": str(p["refcocog_instances"]), "split": "val"}
    return {"coco_cls": {"type": "coco_instances", "ann_file": str(p["instances_val"]),
                         "prompt": {"type": "region_classification", "vocabulary": "COCO-80"}},
            "refcocog_caption": {"type": "region_captions", "path": str(p["refcocog_captions_val"])},
            "refcocog_rec": {"type": "refcoco", **refs, "task": "rec"},
            "vg_caption": {"type": "region_captions", "path": str(p["vg_test_caption"]), "region": "box"},
            "pope": {"type": "pope", "path": str(p["pope_val"])},
            "spatial": {"type": "spatialrgpt_bench", "path": str(p["spatialrgpt_bench"])},
            "dlc": {"type": "dlc_bench", "ann_file": str(p["dlc_bench"] / "annotations.json"),
                    "qa_file": str(p["dlc_bench"] / "qa.json")},
            "lvis_cls": {"type": "osprey_categories", "path": str(p["osprey_val"]),
                         "prompt": {"type": "region_classification", "task_guidance": False,
                                    "phrasings": ["What is the category of {region}? Using only one word or phrase."]}},
            "paco_cls": {"type": "osprey_categories", "path": str(p["osprey_val"]),
                         "prompt": {"type": "region_classification", "task_guidance": False,
                                    "phrasings": ["What is the category of {region}? Using only one word or phrase."]}},
            }[name]


def plain(x):
    """A sample as plain data (Regions → kinds, size and coordinates), to compare two samples."""
    if isinstance(x, Regions):
        return {"kinds": x.kinds, "size": x.image_size, "items": plain([d for _, d in x.items])}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    return x.tolist() if hasattr(x, "tolist") else x


@pytest.mark.parametrize("name", NAMES)
def test_benchmark_samples_are_the_datasets_eval_samples(name, data):
    """What is evaluated is what could be trained on: the same files through the registered dataset with
    ``train: false`` give the benchmark's samples, answer turn included (generation drops it)."""
    from regionvlm.registry import DATASETS

    b = bench(name, data, limit=5)
    ds = DATASETS.build({**dataset_node(name, data), "image_root": str(data["images"]), "train": False})
    assert len(ds) >= len(b.samples()) == 5
    assert plain(b.samples()) == plain([ds[i] for i in range(5)])
    assert all(isinstance(s["regions"], Regions) for s in b.samples())
    if name not in ("dlc",):   # the DLC file holds questions about the caption, not the caption
        assert all(s["conversations"][-1]["from"] == "gpt" for s in b.samples())
    # training mode: the same items, phrasings drawn by the per-sample rng
    train = DATASETS.build({**dataset_node(name, data), "train": True, "seed": 3})
    assert [s["target"] for s in train] == [s["target"] for s in ds]


def test_prompts_are_the_training_prompts_in_evaluation_phrasing(data):
    from regionvlm.registry import DATASETS, PROMPTS

    b = bench("coco_cls", data)
    ds = DATASETS.build({"type": "coco_instances", "ann_file": str(data["instances_val"]), "train": False,
                         "prompt": {"type": "region_classification", "vocabulary": "COCO-80"}})
    assert b.samples()[0]["conversations"] == ds[0]["conversations"]   # same node, same first phrasing
    rec = bench("refcocog_rec", data).samples()[0]
    assert human(rec) == PROMPTS.build({"type": "rec"}).build(
        _sentence(data, rec["target"]["sent_id"]), len(rec["regions"]))[0]["value"]
    assert human(rec).endswith("Answer the question using the template Region [x].")
    pope = bench("pope", data)
    q = pope.samples()[0]
    text = pope.annotations[q["target"]["split"]][str(q["target"]["question_id"])]["text"]
    assert human(q) == f"<image>\n{text} Answer the question using a single word or phrase."
    assert human(bench("dlc", data).samples()[0]) == \
        "<image>\nDescribe <region1> in detail. Answer the question with a detailed description."
    by_cat = {s["target"]["qa_info"]["category"]: human(s) for s in bench("spatial", data).samples()}
    assert by_cat["left_predicate"] == \
        "<image>\nIs <region1> to the left of <region2>? Answer the question with yes or no."
    assert by_cat["left_choice"].endswith("? Answer the question using the template Region [x].")
    assert by_cat["width_data"].endswith("? Answer the question with a number and a unit.")
    assert by_cat["direction"] == ("<image>\nIf you are at <region1>, where will you find <region2>? "
                                   "Answer the question with a clock direction.")
    assert human(bench("lvis_cls", data).samples()[0]) == \
        "<image>\nWhat is the category of <region1>? Using only one word or phrase."
    # `vocabulary: categories` lists the benchmark's own category names
    listed = bench("coco_cls", data, prompt={"type": "region_classification", "vocabulary": "categories"})
    assert "one of these category names: red circle," in human(listed.samples()[0])


def _sentence(data, sent_id):
    from regionvlm.data.formats import read_refs

    return next(s["sent"] for r in read_refs(data["refcocog_refs"]) for s in r["sentences"] if s["sent_id"] == sent_id)


def test_literal_prompt_strings(data):
    turn = human(bench("refcocog_rec", data, prompt='Pick "{expression}" from {candidates}.').samples()[0])
    assert turn.startswith('<image>\nPick "the ') and turn.endswith(">.") and "Answer" not in turn
    assert human(bench("coco_cls", data, prompt="Name {region}.").samples()[0]) == "<image>\nName <region1>."
    with pytest.raises(ConfigError, match=r"refcocog_rec: prompt: does not fit .*KeyError: 'regions'"):
        bench("refcocog_rec", data, prompt="Which of {regions}?").samples()
    with pytest.raises(Exception, match=r"pope: prompt.type"):
        bench("pope", data, prompt={"type": "no_such_prompt"}).samples()


def test_vg_caption_image_file_pattern(data):
    fmt = {"format": "region_descriptions"}
    assert bench("vg_caption", data, **fmt).samples()[0]["image"].endswith(".jpg")   # VG's own {image_id}.jpg
    for s in bench("vg_caption", data, image_file="synth_{image_id:06d}.png", **fmt).samples():
        assert __import__("os").path.exists(s["image"]), s["image"]


def test_wrong_annotation_count_is_a_config_error(data):
    with pytest.raises(ConfigError, match="refcocog_caption: annotations: expected 2 file"):
        load_benchmark("refcocog_caption", annotations=[str(data["refcocog_refs"])], per="object")
    with pytest.raises(ConfigError, match="refcocog_caption: annotations: expected 1 file"):
        load_benchmark("refcocog_caption", annotations=[str(data["refcocog_refs"])] * 2)


def _perfect(b, answer):
    return [b.prediction_row(s, answer(s)) for s in b.samples()]


def test_coco_cls_known_answers_and_identical_paths(data, tmp_path):
    b = bench("coco_cls", data, protocol="lenient")
    rows = _perfect(b, lambda s: s["target"]["answer"].upper() + "s.")   # case, plural, punctuation
    got = b.evaluate(rows)
    assert got["accuracy"] == 100 and got["mAP"] == pytest.approx(100) and got["unmatched"] == 0
    # the reference reading (eval_coco_obo.py: stripped answer == lower-cased name) counts none of them, and
    # reports under reference/ when the lenient protocol is the default
    assert got["reference/accuracy"] == 0 and got["reference/unmatched"] == len(rows)
    assert got["semantic_iou"] == pytest.approx(100 * sum(
        len({w for w in (r["text"].lower().replace(".", " ")).split()} & set(s["target"]["answer"].split())) /
        len({w for w in (r["text"].lower().replace(".", " ")).split()} | set(s["target"]["answer"].split()))
        for r, s in zip(rows, b.samples())) / len(rows))
    write_predictions(tmp_path / "p.jsonl", rows)
    assert b.score_file(tmp_path / "p.jsonl") == got            # eval path == score path
    nosem = bench("coco_cls", data, semantic=False)
    wrong = nosem.evaluate(_perfect(nosem, lambda s: "zebra"))
    assert wrong["accuracy"] == 0 and wrong["mAP"] == 0 and wrong["unmatched"] == len(rows)


def test_refcocog_rec_known_answers(data):
    b = bench("refcocog_rec", data)
    good = b.evaluate(_perfect(b, lambda s: f"It is {s['target']['answer']}"))
    assert good["accuracy"] == good["accuracy_by_id"] == 100 and good["unparseable"] == 0
    bad = b.evaluate(_perfect(b, lambda s: "the red one"))
    assert bad["accuracy"] == 0 and bad["unparseable"] == len(b.samples())
    rows = _perfect(b, lambda s: "Region [1]")
    rows[0]["candidates"] = [999999]
    with pytest.raises(DataError, match="candidates: annotation id 999999"):
        b.evaluate(rows)


def test_pope_known_answers_and_splits(data, tmp_path):
    b = bench("pope", data)
    got = b.evaluate(_perfect(b, lambda s: "Yes, there is." if s["target"]["answer"] == "yes" else "No."))
    split = b.splits[0]
    assert got[f"{split}/accuracy"] == 100 and got[f"{split}/f1"] == 100
    # a second split file: rows are keyed by (split, question_id)
    second = tmp_path / "coco_pope_popular.json"
    second.write_text(data["pope_val"].read_text())
    b2 = load_benchmark("pope", annotations=[str(data["pope_val"]), str(second)])
    rows = _perfect(b2, lambda s: "yes")
    assert {r["split"] for r in rows} == {split, "popular"}
    res = b2.evaluate(rows)
    assert res["popular/yes_ratio"] == 100 and res["popular/recall"] == 100
    del rows[0]["split"]
    with pytest.raises(DataError, match="has no 'split'"):
        b2.evaluate(rows)


def test_partial_coverage_reported(data):
    b = bench("pope", data)
    rows = _perfect(b, lambda s: "yes")[:3]
    with pytest.raises(DataError, match="missing predictions"):
        b.evaluate(rows)
    got = b.evaluate(rows, allow_partial=True)
    assert got["num_samples"] == 3 and got["coverage"] == pytest.approx(300 / len(b.samples()))
    assert any("partial coverage" in n for n in b.notes)


def test_spatial_rules_and_judge(data):
    b = bench("spatial", data)

    def truth(s):   # the ground truth, choices re-read in our 1-based template
        gt = s["target"]["answer"]
        return __import__("re").sub(r"Region \[(\d)\]", lambda m: f"Region [{int(m.group(1)) + 1}]", gt) \
            if s["target"]["qa_info"]["category"].endswith("_choice") else gt

    got = b.evaluate(_perfect(b, truth))
    assert got["qualitative_accuracy"] == 100 and got["quantitative_success"] == 100 and got["unparsed"] == 0
    assert got["quantitative/direction/success"] == 100 and got["quantitative/width/abs_rel"] == 0
    assert "qualitative/left/right" in got and "quantitative/direct_distance/success" in got
    wrong = b.evaluate(_perfect(b, lambda s: "I cannot tell."))
    assert wrong["quantitative_success"] == 0
    # a judge (reference JSON): always a match, responses 1000 m and the 6 o'clock direction
    def judge(prompts):
        return ['{"answer_direction": 12, "response_direction": 6}' if "clock" in p else
                '{"answer_in_meters": 1.0, "response_in_meters": 1000}' if "meters" in p else '{"your_mark": 1}'
                for p in prompts]
    res = bench("spatial", data, judge=judge).evaluate(_perfect(b, lambda s: "whatever"))
    assert res["qualitative_accuracy"] == 100 and res["quantitative_success"] == 0
    assert res["quantitative/direction/error_deg"] == 180 and res["quantitative/width/abs_rel"] == 999


def test_dlc_rules_and_judge(data):
    b = bench("dlc", data)
    assert b.generation == {"max_new_tokens": 512}
    got = b.evaluate(_perfect(b, lambda s: f"A {b.annotations[str(s['target']['ann_id'])]['class_name']}."))
    n = len(b.samples())
    assert got == {"pos": 100.0, "neg": 100.0, "avg": 100.0, "pos_count": n, "neg_count": n, "not_recognised": 0,
                   "unparsed": 0, "num_samples": n}
    # not recognised: scores capped at 0 (the recognition gate)
    silent = b.evaluate(_perfect(b, lambda s: "Something."))
    assert silent["pos"] == 0 and silent["neg"] == 0 and silent["not_recognised"] == len(b.samples())
    # a judge answering "A": recognised, the first choice: right for positives, wrong for negatives
    judged = bench("dlc", data, judge=lambda prompts: ["A"] * len(prompts))
    res = judged.evaluate(_perfect(judged, lambda s: "anything"))
    assert res["pos"] == 100 and res["neg"] == -100 and res["avg"] == 0


def test_hf_judge_runs_a_saved_causal_lm(data, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from regionvlm.data.synth.tokenizer import train_tiny_tokenizer
    from regionvlm.evaluation.judges import HFJudge

    tok = train_tiny_tokenizer(tmp_path / "judge", vocab_size=300)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "judge")
    judge = HFJudge(str(tmp_path / "judge"), max_new_tokens=3)
    replies = judge(["Answer:", "Question: is it red?\nAnswer:"])
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    b = bench("dlc", data, judge=judge, limit=2)
    res = b.evaluate(_perfect(b, lambda s: "a red circle"))
    assert -100 <= res["avg"] <= 100 and res["num_samples"] == 2


def test_scores_on_rank_zero_and_broadcasts():
    """`regionvlm eval` scores once, on rank 0; the other ranks get rank 0's result (or its user error)."""
    from types import SimpleNamespace

    from regionvlm.evaluation.runner import score_on_rank_zero

    sent = {}

    def trainer(rank):
        def broadcast(obj, src=0):   # what a 2-process strategy does: every rank receives rank 0's object
            assert src == 0
            if rank == 0:
                sent["obj"] = obj
            return sent["obj"]
        return SimpleNamespace(is_global_zero=rank == 0, strategy=SimpleNamespace(broadcast=broadcast))

    calls = []
    score = lambda: calls.append(1) or {"accuracy": 50.0}   # noqa: E731
    assert score_on_rank_zero(trainer(0), score) == {"accuracy": 50.0}
    assert score_on_rank_zero(trainer(1), score) == {"accuracy": 50.0} and calls == [1]

    def bad():
        raise DataError("p.jsonl: line 3: duplicate id 7")

    with pytest.raises(DataError, match="duplicate id 7"):
        score_on_rank_zero(trainer(0), bad)
    with pytest.raises(DataError, match="duplicate id 7"):   # rank 1 does not wait for a result forever
        score_on_rank_zero(trainer(1), lambda: pytest.fail("rank 1 must not score"))


def _score_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from lightning.pytorch.strategies import DDPStrategy

    from regionvlm.evaluation.runner import score_on_rank_zero

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        from types import SimpleNamespace

        trainer = SimpleNamespace(is_global_zero=rank == 0, strategy=DDPStrategy())
        got = score_on_rank_zero(trainer, lambda: {"accuracy": 100.0 / 3, "scored_by": rank})
        try:
            score_on_rank_zero(trainer, lambda: (_ for _ in ()).throw(DataError("p.jsonl: line 2: bad")))
            err = None
        except DataError as e:
            err = str(e)
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump({"got": got, "err": err}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow   # ~45 s on 2 shared cores: two fresh processes import Lightning
def test_two_processes_get_rank_zeros_scores(tmp_path):
    """Through Lightning's DDP strategy broadcast (gloo, 2 processes): rank 1 receives rank 0's numbers."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_score_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert seen[0] == seen[1] == {"got": {"accuracy": 100.0 / 3, "scored_by": 0}, "err": "p.jsonl: line 2: bad"}


def test_refcocog_rec_proposals_and_no_option(data, tmp_path):
    """Candidates from a detections file: accuracy by IoU ≥ 0.5 (ids unknown), and "no option fits" is right
    exactly when no proposal reaches the threshold."""
    from regionvlm.data.formats import CocoInstances, read_refs

    inst = CocoInstances(str(data["refcocog_instances"]))
    refs = [r for r in read_refs(data["refcocog_refs"]) if r["split"] == "val"]
    referred = {r["ann_id"] for r in refs}
    # per image: a far-off junk box, then the image's first referred box (if any, shifted by 1 px)
    dets = []
    for image_id in sorted({r["image_id"] for r in refs}):
        dets.append({"image_id": image_id, "bbox": [0, 0, 2, 2], "score": 0.9})
        first = min(a for a in referred if inst.anns[a]["image_id"] == image_id)
        x, y, w, h = inst.anns[first]["bbox"]
        dets.append({"image_id": image_id, "bbox": [x + 1, y, w, h], "score": 0.5})
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    b = bench("refcocog_rec", data, proposals=str(tmp_path / "dets.json"))
    samples = b.samples()
    fits = [s["target"]["answer"] != "No corresponding options found." for s in samples]
    assert any(fits) and not all(fits)   # some refs are the image's first referred box, some are not
    got = b.evaluate(_perfect(b, lambda s: s["target"]["answer"]))
    assert got["accuracy"] == 100 and "accuracy_by_id" not in got   # proposals have no annotation ids
    assert got["no_option_fits"] == got["answered_no_option"] == got["no_option_correct"] == fits.count(False)
    assert all(len(c) == 4 for c in b.prediction_row(samples[0], "")["candidates"])   # proposal boxes, xywh
    always_first = b.evaluate(_perfect(b, lambda s: "Region [1]."))   # the junk box: never right
    assert always_first["accuracy"] == 0 and always_first["unparseable"] == 0


def test_osprey_files_with_lvis_ids_key_rows_by_them(tmp_path):
    """LVIS/PACO (Osprey's files): a file whose annotations carry their LVIS id is keyed by it, so a user's
    predictions join with LVIS; a file without ids keeps the region's position; ids for only some regions, or
    the same id twice, are an error naming the region."""
    poly = [[1, 1, 9, 1, 9, 9, 1, 9]]

    def entry(ids):
        return {"file_name": "a.jpg", "height": 20, "width": 20, "categories": ["cat", "dog"][:len(ids)],
                "annotations": [{"segmentation": poly, **({"id": i} if i is not None else {})} for i in ids]}

    path = tmp_path / "lvis_val_1k_category.json"
    path.write_text(json.dumps([entry([501, 502]), entry([777])]))
    b = load_benchmark("lvis_cls", annotations=[str(path)])
    assert b.reference_ids() == ["501", "502", "777"]
    assert [b.prediction_row(s, "x")["id"] for s in b.samples()] == [501, 502, 777]
    assert b.annotations == {"501": "cat", "502": "dog", "777": "cat"}
    path.write_text(json.dumps([entry([None, None]), entry([None])]))
    assert load_benchmark("lvis_cls", annotations=[str(path)]).reference_ids() == ["0", "1", "2"]
    path.write_text(json.dumps([entry([501, None])]))
    with pytest.raises(DataError, match=r"region 1: no integer annotation 'id'"):
        load_benchmark("paco_cls", annotations=[str(path)]).reference_ids()
    path.write_text(json.dumps([entry([501, 501])]))
    with pytest.raises(DataError, match=r"region 1: annotation id 501 also at region 0"):
        load_benchmark("paco_cls", annotations=[str(path)]).reference_ids()
