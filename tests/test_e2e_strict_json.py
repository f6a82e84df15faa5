"""End to end through ``regionvlm eval`` on the tiny preset (a random-init tiny export, a few samples per
benchmark) with a judge for the judged benchmarks: every JSON file the run writes parses with a strict parser (no
``NaN``/``Infinity``), the judge caches land beside the predictions (DLC-Bench's in DAM's layout), and a rerun of
the killed evaluation scores from them without asking the judge again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from regionvlm.cli import main
from regionvlm.registry import JUDGES

TINY = Path(__file__).resolve().parents[1] / "projects" / "rgpt" / "tiny"


class ReplayJudge:
    """A judge that answers every DAM question "A" and every SpatialRGPT prompt with the JSON it asks for."""

    prompts = 0
    name = "test-replay-judge"

    def __call__(self, prompts):
        ReplayJudge.prompts += len(prompts)
        return ['{"your_mark": 1, "answer_in_meters": 1.5, "response_in_meters": 2.0, "answer_direction": 3, '
                '"response_direction": 4}' if "JSON format" in p else "A" for p in prompts]


if "test_replay_judge" not in JUDGES:
    JUDGES.register("test_replay_judge")(ReplayJudge)


def strict_load(text: str):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def evaluated(tiny_workspace, tiny_export):
    out = tiny_workspace / "eval_strict"
    limits = [f"eval.benchmarks.{b}.limit=3" for b in ("coco_cls", "refcocog_caption", "refcocog_rec",
                                                        "vg_caption", "pope", "spatial", "dlc", "lvis_cls")]
    argv = ["eval", str(TINY / "eval.yaml"), "--model", str(tiny_export[3]), f"eval.out_dir={out}", *limits,
            "eval.benchmarks.dlc.max_new_tokens=3", "eval.benchmarks.dlc.judge.type=test_replay_judge",
            "eval.benchmarks.spatial.judge.type=test_replay_judge", "eval.batch_size=4", "eval.num_workers=0",
            "generation.max_new_tokens=3", "eval.gallery=0"]
    ReplayJudge.prompts = 0
    assert main(argv) == 0
    return out, argv, ReplayJudge.prompts


def test_every_json_output_is_strict_json(evaluated):
    out, _, asked = evaluated
    files = sorted(p for p in out.rglob("*") if p.suffix in (".json", ".jsonl"))
    assert out / "results.json" in files and len(files) >= 10
    for path in files:
        text = path.read_text()
        rows = text.splitlines() if path.suffix == ".jsonl" else [text]
        for row in rows:
            strict_load(row)   # raises on NaN / Infinity / -Infinity
    results = strict_load((out / "results.json").read_text())
    assert set(results) == {"coco_cls", "refcocog_caption", "refcocog_rec", "vg_caption", "pope", "spatial", "dlc",
                            "lvis_cls"}
    assert asked > 0 and results["dlc"]["num_samples"] == 3


def test_judge_caches_beside_predictions(evaluated):
    out, _, _ = evaluated
    dam = strict_load((out / "dlc" / "predictions_eval.json").read_text())
    regions = {k: v for k, v in dam.items() if isinstance(v, dict)}
    assert len(regions) == 3 and dam["judge_model"] == "test-replay-judge"
    assert all({"pred", "prompt", "response", "details_recognition", "score_pos"} <= set(v) for v in regions.values())
    ours = strict_load((out / "spatial" / "predictions_judge.json").read_text())
    assert ours["format"] == "regionvlm.judge_cache" and len(ours["entries"]) == 3


def test_a_rerun_scores_from_the_caches_without_the_judge(evaluated):
    out, argv, _ = evaluated
    before = strict_load((out / "results.json").read_text())
    (out / "results.json").unlink()   # as if killed before the end: the same evaluation resumes
    ReplayJudge.prompts = 0
    assert main(argv) == 0
    assert ReplayJudge.prompts == 0
    assert strict_load((out / "results.json").read_text()) == before
