"""The worked example of docs/adding-a-task.md: a region task defined outside the core
(examples/region_counting/), trained a few steps and evaluated through the CLI, plus its parser and metric.

The example is registered through its configs' ``imports: [counting]``, with its folder put on ``sys.path`` as
``PYTHONPATH=examples/region_counting`` does on the command line. What it registered is removed afterwards so
that other tests see the built-in registries only."""

import json
import os
import sys
from pathlib import Path

import pytest

from regionvlm.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "region_counting"
FAST = ["trainer.max_steps=3", "trainer.limit_val_batches=1", "data.batch_size=4", "data.num_workers=0",
        "model.init_from=null"]
LIMIT = 8


@pytest.fixture(scope="module")
def counting():
    """``import counting`` as ``imports: [counting]`` does, then unregister it."""
    from regionvlm.registry import BENCHMARKS, DATASETS, PROMPTS

    sys.path.insert(0, str(EXAMPLE))
    import counting as module

    yield module
    sys.path.remove(str(EXAMPLE))
    sys.modules.pop("counting", None)
    for registry in (BENCHMARKS, DATASETS, PROMPTS):
        registry._items.pop("region_counting", None)


@pytest.fixture(scope="module")
def workspace(tiny_workspace, counting):
    return tiny_workspace


# -- the answer parser and the metric ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, count", [
    ("2", 2), (" 3\n", 3), ("There are 3.", 3), ("2 objects", 2), ("two", 2), ("Three.", 3), ("TWELVE", 12),
    ("twenty-one", 21), ("none", 0), ("0", 0), ("a single one", 1), ("a pair of them", 2), ("10 circles, 2 red", 10),
    ("I see four, maybe 5", 4), ("2.5", 2), ("many", None), ("", None), ("No.", None), ("x2", None),
    ("someone", None),
])
def test_parse_count(counting, text, count):
    assert counting.parse_count(text) == count


def test_count_metrics_on_known_inputs(counting):
    m = counting.count_metrics([2, 1, None, 4], [2, 2, 3, 4])
    assert m == {"accuracy": 50.0, "mae": pytest.approx((0 + 1 + 3 + 0) / 4), "unparseable": 1}
    assert counting.count_metrics([], []) == {"accuracy": 0.0, "mae": 0.0, "unparseable": 0}
    with pytest.raises(ValueError):
        counting.count_metrics([1], [1, 2])


def test_counts_match_the_annotations(counting):
    from regionvlm.data.formats import CocoInstances

    def ann(i, image, cat, crowd=0):
        return {"id": i, "image_id": image, "category_id": cat, "bbox": [0, 0, 4, 4], "iscrowd": crowd}

    coco = CocoInstances({
        "images": [{"id": 1, "width": 8, "height": 8}, {"id": 2, "width": 8, "height": 8}],
        "categories": [{"id": 1, "name": "red circle", "supercategory": "circle"},
                       {"id": 2, "name": "blue circle", "supercategory": "circle"},
                       {"id": 3, "name": "red square", "supercategory": "square"}],
        "annotations": [ann(1, 1, 1), ann(2, 1, 1), ann(3, 1, 2), ann(4, 1, 3), ann(5, 2, 1), ann(6, 1, 1, crowd=1)],
    })
    assert counting.count_alike(coco) == {1: 2, 2: 2, 3: 1, 4: 1, 5: 1}
    assert counting.count_alike(coco, "supercategory") == {1: 3, 2: 3, 3: 3, 4: 1, 5: 1}
    assert counting.count_alike(coco, skip_crowd=False)[6] == 3


def test_benchmark_scores_known_predictions(counting, workspace):
    from regionvlm.evaluation.benchmark import load_benchmark

    bench = load_benchmark(str(EXAMPLE / "region_counting.yaml"), limit=LIMIT)
    samples = bench.samples()
    assert len(samples) == LIMIT
    question = samples[0]["conversations"][0]["value"]
    assert question == "<image>\nHow many <region1>-like objects are in the image? Answer the question using a number."
    truth = [s["target"]["answer"] for s in samples]
    perfect = bench.evaluate([bench.prediction_row(s, f"There are {a}.") for s, a in zip(samples, truth)])
    assert perfect == {"accuracy": 100.0, "mae": 0.0, "unparseable": 0, "num_samples": LIMIT}
    texts = ["I don't know"] + [str(int(a) + 1) for a in truth[1:]]   # one unparseable, the rest off by one
    scored = bench.evaluate([bench.prediction_row(s, t) for s, t in zip(samples, texts)])
    assert scored["accuracy"] == 0.0 and scored["unparseable"] == 1
    assert scored["mae"] == pytest.approx((int(truth[0]) + (LIMIT - 1)) / LIMIT)


def test_training_samples_ask_the_benchmark_question(counting, workspace):
    from regionvlm.registry import DATASETS

    ann_file = workspace / "data" / "synth" / "annotations" / "instances_val.json"
    ds = DATASETS.build({"type": "region_counting", "ann_file": str(ann_file), "train": False})
    sample = ds[0]
    human, gpt = sample["conversations"]
    assert human["value"].endswith("Answer the question using a number.") and gpt["value"].isdigit()
    assert sample["task"] == "region_counting" and len(sample["regions"]) == 1
    # the benchmark evaluates exactly these samples (one sample path)
    from regionvlm.evaluation.benchmark import load_benchmark

    bench = load_benchmark(str(EXAMPLE / "region_counting.yaml"), annotations=[str(ann_file)], limit=5)
    assert [(s["id"], s["conversations"], s["target"]) for s in bench.samples()] == \
        [(s["id"], s["conversations"], s["target"]) for s in (ds[i] for i in range(5))]


# -- end to end through the CLI -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(workspace):
    assert main(["train", str(EXAMPLE / "train.yaml"), *FAST]) == 0
    run = workspace / "runs" / "region-counting"
    assert (run / "export").is_dir() and (run / "checkpoints" / "last.ckpt").is_file()
    return run


def test_train_eval_score(trained, workspace, capsys):
    out = workspace / "eval"
    assert main(["eval", str(EXAMPLE / "eval.yaml"), "--model", str(trained / "export"), f"eval.out_dir={out}",
                 f"eval.benchmarks.region_counting.limit={LIMIT}", "eval.batch_size=4", "eval.num_workers=0",
                 "eval.gallery=0", "generation.max_new_tokens=3"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"region_counting"}
    metrics = results["region_counting"]
    assert set(metrics) == {"accuracy", "mae", "unparseable", "num_samples"}
    assert metrics["num_samples"] == LIMIT and 0 <= metrics["accuracy"] <= 100 and metrics["mae"] >= 0
    assert "| region_counting | accuracy |" in (out / "results.md").read_text()
    predictions = out / "region_counting" / "predictions.jsonl"
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == LIMIT and all(set(r) == {"id", "text"} for r in rows)

    capsys.readouterr()
    ann_file = workspace / "data" / "synth" / "annotations" / "instances_val.json"
    assert main(["score", "region_counting", "--predictions", str(predictions), "--annotations", str(ann_file),
                 "--json", "-o", f"limit={LIMIT}"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(metrics)
    # the benchmark's own YAML (default annotation paths) gives the same numbers
    assert main(["score", str(EXAMPLE / "region_counting.yaml"), "--predictions", str(predictions), "--json",
                 "-o", f"limit={LIMIT}"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(metrics)


def test_entry_point_registers_the_task_for_every_command(counting, workspace, tmp_path):
    """Installed as a package (pyproject.toml's ``regionvlm.plugins`` entry point), ``regionvlm score
    region_counting`` finds the benchmark with no ``imports:``: a fresh process, with the distribution's metadata
    (what ``pip install`` writes) on its path, scores a file as the in-process benchmark does."""
    import subprocess

    tomllib = pytest.importorskip("tomllib")   # Python >= 3.11

    from regionvlm.evaluation.benchmark import load_benchmark

    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    entry_points = project["entry-points"]["regionvlm.plugins"]
    dist = tmp_path / "site" / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (dist / "entry_points.txt").write_text(
        "[regionvlm.plugins]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))

    ann_file = workspace / "data" / "synth" / "annotations" / "instances_val.json"
    bench = load_benchmark("region_counting", annotations=[str(ann_file)], limit=LIMIT)
    rows = [bench.prediction_row(s, ["1", "two", "?"][k % 3]) for k, s in enumerate(bench.samples())]
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(EXAMPLE)])}
    proc = subprocess.run([sys.executable, "-m", "regionvlm.cli", "score", "region_counting", "--predictions",
                           str(predictions), "--annotations", str(ann_file), "--json", "-o", f"limit={LIMIT}"],
                          check=False, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == pytest.approx(bench.evaluate(rows))
