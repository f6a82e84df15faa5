"""The ``scope`` benchmark (issue 14, claim (c)): its answer readers and metrics on known inputs, its samples (two
questions per region, task guidance switchable per prompt node), hand-made predictions with known metric
values, and `regionvlm eval` + `regionvlm score` on a tiny random export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from regionvlm.errors import ConfigError, DataError
from regionvlm.evaluation.benchmark import load_benchmark
from regionvlm.evaluation.predictions import write_predictions
from regionvlm.evaluation.scope import attribute_words, is_sentence, mentions, scope_label, scope_metrics
from regionvlm.registry import DATASETS

TINY = Path(__file__).resolve().parents[1] / "projects" / "rgpt" / "tiny"
CATEGORIES = ["red circle", "blue square", "traffic light"]


@pytest.mark.parametrize(("text", "label"), [("Red Circle.", "red circle"), ("  blue square .\n", "blue square"),
                                             ("red circle..", "red circle."), ("a dog", "a dog")])
def test_scope_label_ignores_case_whitespace_and_one_final_period(text, label):
    assert scope_label(text) == label


def test_is_sentence_needs_enough_words_and_no_bare_label():
    vocab = {"red circle", "big red circle thing"}
    assert is_sentence("This is a red circle.", vocab)
    assert not is_sentence("a red circle", vocab)            # three words
    assert not is_sentence("Big red circle thing.", vocab)   # four words, but a label
    assert is_sentence("a red circle", vocab, min_words=3)
    assert not is_sentence("red circle", vocab, min_words=1)


def test_attribute_words_split_the_category_name():
    assert attribute_words("red circle") == ["red", "circle"]
    assert attribute_words("traffic light") == ["traffic", "light"]
    assert attribute_words("hot_dog", separator="_") == ["hot", "dog"]
    assert attribute_words("hot_dog") == ["hot dog"]           # whitespace only: one phrase
    assert attribute_words("the Red, circle", separator=",") == ["red", "circle"]   # article dropped


def test_mentions_whole_words_any_or_all():
    assert mentions("Two red shapes.", ["red", "circle"])
    assert not mentions("Two red shapes.", ["red", "circle"], mode="all")
    assert mentions("Some circles, all red", ["red", "circle"], mode="all")   # plurals forgiven
    assert not mentions("a reddish blob", ["red"])                           # whole words only
    assert mentions("a hot dog stand", ["hot dog"]) and not mentions("hot, then a dog", ["hot dog"])
    assert not mentions("anything", [])


def test_scope_metrics_known_values():
    labels = ["red circle", "blue square", "traffic light", "red circle"]
    classification = ["Red Circle. ", "red circle", "It is a traffic light.", "red circles"]
    open_answers = ["red circle", "A small blue shape near the top.", "Two lights hang over the road.",
                    "Something is in the picture here"]
    m = scope_metrics(classification, labels, open_answers, labels, CATEGORIES)
    # labels: answers 1 and 2 (a plural is not a label); right: answer 1 only
    # sentences: 2, 3, 4 (answer 1 is a bare label); grounded: 1 (red), 2 (blue), 3 (lights → light)
    assert m == pytest.approx({"label_rate": 50.0, "accuracy": 25.0, "sentence_rate": 75.0,
                               "grounded_rate": 75.0, "scope_adherence": 62.5})
    assert scope_metrics(classification, labels, open_answers, labels, CATEGORIES,
                         grounded="all")["grounded_rate"] == 25.0           # only "red circle" names both words
    assert scope_metrics(classification, labels, open_answers, labels, CATEGORIES,
                         min_words=7)["sentence_rate"] == 25.0              # only answer 2 has seven words
    assert scope_metrics(classification, labels, open_answers, labels, CATEGORIES,
                         min_words=1)["sentence_rate"] == 75.0              # the bare label stays out
    # one kind only: the other kind's metrics and the mean are left out, not reported as 0
    assert set(scope_metrics(classification, labels, [], [], CATEGORIES)) == {"label_rate", "accuracy"}
    assert set(scope_metrics([], [], open_answers, labels, CATEGORIES)) == {"sentence_rate", "grounded_rate"}


# -- the benchmark ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def instances(tmp_path_factory) -> Path:
    """A hand-written COCO instances file: four regions of three categories (one not "<colour> <shape>")."""
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(CATEGORIES)]
    anns = [{"id": 10 + k, "image_id": 1 + k // 2, "category_id": c, "bbox": [4 * k, 4, 20, 20], "area": 400,
             "iscrowd": 0} for k, c in enumerate([1, 2, 3, 1])]
    anns.append({"id": 99, "image_id": 1, "category_id": 2, "bbox": [0, 0, 60, 60], "area": 3600, "iscrowd": 1})
    images = [{"id": i, "file_name": f"{i}.png", "height": 64, "width": 64} for i in (1, 2)]
    path = tmp_path_factory.mktemp("scope") / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def scope(instances, **kw):
    return load_benchmark("scope", annotations=[str(instances)], images="imgs", **kw)


def human(sample) -> str:
    return sample["conversations"][0]["value"]


def test_samples_ask_two_questions_per_region_through_the_training_datasets(instances):
    bench = scope(instances)
    samples = bench.samples()
    assert [s["id"] for s in samples] == [f"scope-{q}-{a}" for a in (10, 11, 12, 13) for q in ("classification", "open")]
    assert bench.reference_ids() == [f"{q}/{a}" for a in (10, 11, 12, 13) for q in ("classification", "open")]
    # the classification sample is the coco_instances dataset's eval sample, asked with the file's vocabulary
    ds = DATASETS.build({"type": "coco_instances", "ann_file": str(instances), "image_root": "imgs", "train": False,
                         "prompt": {"type": "region_classification", "vocabulary": "categories"}})
    cls, open_ = samples[0], samples[1]
    assert cls["conversations"] == ds[0]["conversations"] and cls["image"] == ds[0]["image"] == "imgs/1.png"
    assert cls["regions"].to_boxes().tolist() == ds[0]["regions"].to_boxes().tolist() == [[0, 4, 20, 24]]
    assert human(cls).endswith("one of these category names: red circle, blue square, traffic light.")
    assert cls["target"] == {"ann_id": 10, "category_id": 1, "answer": "red circle", "question": "classification"}
    # the open sample: the brief-caption question about the same region, no reference answer
    assert human(open_) == "<image>\nGive a brief description of <region1>. Answer the question using a short phrase."
    assert open_["conversations"] == open_["conversations"][:1] and open_["task"] == "brief_caption"
    assert open_["target"] == {"ann_id": 10, "category_id": 1, "question": "open"}
    assert open_["regions"].to_boxes().tolist() == [[0, 4, 20, 24]] and open_["image"] == "imgs/1.png"
    # limit counts regions; crowd regions are left out unless asked for
    assert len(scope(instances, limit=3).samples()) == 6
    assert len(scope(instances, include_crowd=True).samples()) == 10


def test_task_guidance_follows_each_prompt_node(instances):
    off = scope(instances, prompt={"type": "region_classification", "vocabulary": "categories", "task_guidance": False},
                open_prompt={"type": "brief_caption", "task_guidance": False}).samples()
    assert human(off[0]) == "<image>\nWhat category name best describes the region represented by <region1>?"
    assert human(off[1]) == "<image>\nGive a brief description of <region1>."
    only_open = scope(instances, open_prompt={"type": "brief_caption", "task_guidance": False}).samples()
    assert "category names" in human(only_open[0]) and human(only_open[1]).endswith("<region1>.")
    literal = scope(instances, open_prompt="Describe <region1> in one sentence.").samples()
    assert human(literal[1]) == "<image>\nDescribe <region1> in one sentence."


def test_hand_made_predictions_give_known_metrics(instances, tmp_path):
    bench = scope(instances)
    answers = {10: ("Red Circle. ", "red circle"), 11: ("red circle", "A small blue shape near the top."),
               12: ("It is a traffic light.", "Two lights hang over the road."),
               13: ("red circles", "Something is in the picture here")}
    rows = [bench.prediction_row(s, answers[s["target"]["ann_id"]][s["target"]["question"] == "open"])
            for s in bench.samples()]
    assert rows[1] == {"id": 10, "text": "red circle", "question": "open"}
    expected = {"label_rate": 50.0, "accuracy": 25.0, "sentence_rate": 75.0, "grounded_rate": 75.0,
                "scope_adherence": 62.5, "num_samples": 8}
    assert bench.evaluate(rows) == pytest.approx(expected)
    path = tmp_path / "predictions.jsonl"
    write_predictions(path, reversed(rows))   # scoring does not depend on the row order
    assert bench.score_file(path) == pytest.approx(expected)
    assert scope(instances, grounded="all").score_file(path)["grounded_rate"] == 25.0
    # a model collapsed onto labels: perfect classification, no sentence
    labels = {10: "red circle", 11: "blue square", 12: "traffic light", 13: "red circle"}
    collapsed = [bench.prediction_row(s, labels[s["target"]["ann_id"]]) for s in bench.samples()]
    assert bench.evaluate(collapsed) == pytest.approx({"label_rate": 100.0, "accuracy": 100.0, "sentence_rate": 0.0,
                                                      "grounded_rate": 100.0, "scope_adherence": 50.0,
                                                      "num_samples": 8})


def test_bad_rows_and_options_are_clear_errors(instances, tmp_path):
    bench = scope(instances)
    rows = [bench.prediction_row(s, "x") for s in bench.samples()]
    path = tmp_path / "p.jsonl"
    write_predictions(path, [{"id": 10, "text": "x"}, *rows[1:]])
    with pytest.raises(DataError, match=r"p.jsonl: line 1: missing field 'question'"):
        bench.score_file(path)
    write_predictions(path, [{**rows[0], "question": "caption"}, *rows[1:]])
    with pytest.raises(DataError, match=r"line 1: unknown id 'caption/10'"):
        bench.score_file(path)
    write_predictions(path, rows[:3])
    with pytest.raises(DataError, match="missing predictions for 5 of 8"):
        bench.score_file(path)
    partial = bench.score_file(path, allow_partial=True)
    assert partial["coverage"] == pytest.approx(37.5) and "scope_adherence" in partial
    with pytest.raises(ConfigError, match="scope: min_words: expected a positive integer, got 0"):
        scope(instances, min_words=0)
    with pytest.raises(ConfigError, match="scope: grounded: expected one of any, all"):
        scope(instances, grounded="some")
    with pytest.raises(ConfigError, match="open_promt"):
        scope(instances, open_promt={"type": "brief_caption"})
    with pytest.raises(ConfigError, match="scope"):
        scope(instances, open_prompt={"type": "brief_captoin"}).samples()


# -- end to end ---------------------------------------------------------------------------------------------------
def test_eval_and_score_on_a_tiny_export(tiny_workspace, tiny_export, capsys):
    from regionvlm.cli import main

    out = tiny_workspace / "eval-scope"
    assert main(["eval", str(TINY / "eval_scope.yaml"), "--model", str(tiny_export[3]), f"eval.out_dir={out}",
                 "eval.benchmarks.scope.limit=3", "eval.batch_size=4", "eval.num_workers=0", "eval.gallery=2",
                 "generation.max_new_tokens=3"]) == 0
    metrics = json.loads((out / "results.json").read_text())["scope"]
    assert set(metrics) == {"label_rate", "accuracy", "sentence_rate", "grounded_rate", "scope_adherence",
                            "num_samples"}
    assert metrics["num_samples"] == 6 and all(0 <= v <= 100 for v in metrics.values())
    predictions = out / "scope" / "predictions.jsonl"
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["question"] for r in rows] == ["classification", "open"] * 3 and rows[0]["id"] == rows[1]["id"]
    assert (out / "scope" / "gallery.png").is_file()
    capsys.readouterr()
    ann_file = tiny_workspace / "data" / "synth" / "annotations" / "instances_val.json"
    assert main(["score", "scope", "--predictions", str(predictions), "--annotations", str(ann_file), "--json",
                 "-o", "limit=3"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(metrics)


def test_the_ablation_switches_guidance_through_eval_overrides(tiny_workspace):
    """What `regionvlm ablate`'s no-guidance variant sets reaches both questions of eval_scope.yaml."""
    from omegaconf import OmegaConf

    from regionvlm.config import load_config

    cfg = load_config(TINY / "eval_scope.yaml", ["eval.benchmarks.scope.prompt.task_guidance=false",
                                                 "eval.benchmarks.scope.open_prompt.task_guidance=false"])
    assert list(cfg.eval.benchmarks) == ["scope"]
    node = OmegaConf.to_container(cfg.eval.benchmarks.scope, resolve=True)
    cls, open_ = load_benchmark("scope", **{**node, "limit": 1}).samples()
    assert human(cls) == "<image>\nWhat category name best describes the region represented by <region1>?"
    assert human(open_) == "<image>\nGive a brief description of <region1>."
    guided = load_benchmark("scope", **OmegaConf.to_container(load_config(TINY / "eval_scope.yaml").eval.benchmarks.scope,
                                                               resolve=True)).samples()
    assert human(guided[0]).endswith("Answer the question using a single word or phrase.")
    assert human(guided[1]).endswith("Answer the question using a short phrase.")
