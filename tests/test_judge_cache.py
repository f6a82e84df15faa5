"""Judge caches (issue 22): DLC-Bench's is DAM's own ``<pred>_eval.json``; a complete cache scores with no judge,
a killed judged run resumes from its cache and asks only for the rest, a cache of another judge, prompt or
prediction is refused.

The DLC files below are hand-made in DAM's layouts (``qa.json``, ``class_names.json``, ``model_outputs_cache/*.json``,
``*_eval.json``); the expected Pos/Neg/Avg are computed by hand with the rules of DAM's
``evaluation/eval_model_outputs.py`` (noted beside each value). DAM's judge prompt is written out here, word for
word, independently of the code under test."""

from __future__ import annotations

import json
import math

import pytest

from regionvlm.cli import main
from regionvlm.errors import UserError
from regionvlm.evaluation.benchmark import load_benchmark

# eval_model_outputs.py's prompt_eval, copied from DAM's source
DAM_PROMPT = """Answer the multiple-choice question based on the text description of an object in an image. You need to follow these rules:
1. Do not output any reasoning. Do not perform correction. Please output exactly one answer from the choices for each question. Do not repeat the question.
2. There is no need for exact matching. Please choose the closest option based on the description.

The description is:
{pred_caption}

From the description above, please answer the following question with one of the choices:
{question_text_str}
"""  # noqa: E501
AGAIN = "Again, It does not have to be an exact match."
RECOGNITION = [["Yes", "correct"], ["No", "incorrect"]]

QA = {
    "7": [{"question": "What colour is it?", "choices": [["red", 1], ["blue", -1]], "type": "positive"},
          {"question": "What shape is it?", "choices": [["round", 1], ["square", 0.5]], "type": "positive"},
          {"question": "Is it broken?", "choices": [["yes", -1], ["not mentioned", 1]], "type": "negative"}],
    "8": [{"question": "What colour are they?", "choices": [["red", 1], ["blue", -1]], "type": "positive"}],
    "9": [{"question": "What colour is it?", "choices": [["red", 1], ["blue", -1]], "type": "positive"},
          {"question": "Is it broken?", "choices": [["yes", -1], ["not mentioned", 1]], "type": "negative"}],
}
NAMES = {"7": "apple", "8": "balls", "9": "bus"}
PREDS = {"7": "A round red apple.", "8": "Two blue balls.", "9": "A bus."}
QUESTIONS = {  # the recognition question as DAM words it (inflect: "an apple"; "balls" plural; "bus" singular)
    "7": f"Is it likely that the object in the description is an apple or an object of a similar type? {AGAIN}",
    "8": f"Is it likely that the objects in the description are balls or objects of a similar type? {AGAIN}",
    "9": f"Is it likely that the object in the description is a bus or an object of a similar type? {AGAIN}",
}
# the judge's replies, per region: recognition first, then qa.json's questions in order
REPLIES = {"7": ["A. Yes", "A", "B. square", "It is not mentioned."],   # recognised; 1, 0.5; negative 1
           "8": ["No", "A"],                                           # not recognised: 1 capped at 0
           "9": ["yes", "purple", "A. yes"]}                            # recognised; unparsed → 0; negative -1
# DAM's rules by hand: Pos per region 0.75, 0 (capped), 0 → avg_pos 0.25; Neg over regions with negatives (7, 9):
# (1 + -1) / 2 = 0 → avg_neg 0; DAM prints "0.250, 0.000, 0.125"
EXPECTED = {"pos": 25.0, "neg": 0.0, "avg": 12.5, "pos_count": 3, "neg_count": 2, "not_recognised": 1,
            "unparsed": 1, "num_samples": 3}


def dam_prompt(description: str, question: str, choices: list) -> str:
    text = f"{question}\n" + "".join(f"{'ABCDE'[i]}. {c}\n" for i, (c, _) in enumerate(choices))
    return DAM_PROMPT.format(pred_caption=description, question_text_str=text.strip())


def prompts_of(key: str) -> list[str]:
    qs = [(QUESTIONS[key], RECOGNITION)] + [(q["question"], q["choices"]) for q in QA[key]]
    return [dam_prompt(PREDS[key], q, c) for q, c in qs]


# Region 9's record exactly as DAM's evaluate() builds it (details: the question dict, pred_answer = the stripped
# reply, pred_index, question_index without the recognition question, eval_result capped when not recognised)
ENTRY_9 = {
    "pred": "A bus.",
    "details_positives": [{"question": "What colour is it?", "choices": [["red", 1], ["blue", -1]], "type": "positive",
                           "pred_answer": "purple", "pred_index": None, "question_index": 0, "eval_result": 0}],
    "details_negatives": [{"question": "Is it broken?", "choices": [["yes", -1], ["not mentioned", 1]],
                           "type": "negative", "pred_answer": "A. yes", "pred_index": 0, "question_index": 1,
                           "eval_result": -1}],
    "details_recognition": [{"question": QUESTIONS["9"], "choices": RECOGNITION, "type": "recognition",
                             "pred_answer": "yes", "pred_index": 0, "eval_result": "correct"}],
    "prompt": prompts_of("9"), "response": REPLIES["9"],
    "score": -0.5, "score_pos": 0.0, "score_neg": -1.0, "neg_valid_num": 1, "recognition_result": True,
}


def dam_eval_file() -> dict:
    """A cache as DAM's script leaves it: a record per region, then avg_pos / avg_neg (fractions), no model."""
    out = {}
    for key in QA:
        out[key] = {"pred": PREDS[key], "prompt": prompts_of(key), "response": REPLIES[key]}
    out["9"] = ENTRY_9
    out["avg_pos"], out["avg_neg"] = 0.25, 0.0
    return out


@pytest.fixture
def files(tmp_path):
    (tmp_path / "qa.json").write_text(json.dumps(QA))
    (tmp_path / "class_names.json").write_text(json.dumps(NAMES))
    # DAM's model_outputs_cache/<model>.json, with the "query" get_model_outputs.py adds
    (tmp_path / "mine.json").write_text(json.dumps({**PREDS, "query": "<image>\nDescribe the masked region in detail."},
                                                   indent=4))
    return tmp_path


class CountingJudge:
    """Replies from REPLIES by prompt; counts prompts and calls; optionally dies on call ``die_on``."""

    name = "meta-llama/Meta-Llama-3.1-8B-Instruct"
    batch_size = 2

    def __init__(self, die_on: int | None = None):
        self.table = {p: r for key in QA for p, r in zip(prompts_of(key), REPLIES[key])}
        self.prompts, self.calls, self.die_on = 0, 0, die_on

    def __call__(self, prompts):
        self.calls += 1
        if self.calls == self.die_on:
            raise KeyboardInterrupt("killed")
        self.prompts += len(prompts)
        return [self.table[p] for p in prompts]


def dlc(files, **kw):
    return load_benchmark("dlc", annotations=[str(files / "qa.json"), str(files / "class_names.json")], **kw)


def strict(text: str):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def test_a_dam_cache_scores_with_no_judge(files, capsys):
    """`score dlc --judge-cache` on DAM's eval file and DAM's predictions file, only qa.json and class_names.json
    given, no judge configured: DAM's numbers, and the cache is left as it was."""
    cache = files / "mine_eval.json"
    cache.write_text(json.dumps(dam_eval_file(), indent=4))
    before = cache.read_bytes()
    argv = ["score", "dlc", "--predictions", str(files / "mine.json"), "--annotations", str(files / "qa.json"),
            str(files / "class_names.json"), "--judge-cache", str(cache), "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert strict(captured.out) == pytest.approx(EXPECTED)
    assert "9 prompts answered from it, 0 asked" in captured.err
    assert cache.read_bytes() == before


def test_the_cache_regionvlm_writes_is_dams_layout(files):
    judge = CountingJudge()
    cache = files / "mine_eval.json"
    got = dlc(files, judge=judge, judge_cache=str(cache)).score_file(files / "mine.json")
    assert got == pytest.approx(EXPECTED) and judge.prompts == 9
    written = strict(cache.read_text())
    assert list(written) == ["7", "8", "9", "judge_model", "avg_pos", "avg_neg"]   # qa.json's order, as DAM's
    assert written["9"] == ENTRY_9
    assert written["judge_model"] == CountingJudge.name
    assert written["avg_pos"] == pytest.approx(0.25) and written["avg_neg"] == 0.0
    fields = ["pred", "details_positives", "details_negatives", "details_recognition", "prompt", "response", "score",
              "score_pos", "score_neg", "neg_valid_num", "recognition_result"]   # DAM's record, in its order
    assert all(list(written[k]) == fields for k in QA)
    assert written["8"]["recognition_result"] is False and written["8"]["score_neg"] is None
    assert written["8"]["details_positives"][0]["eval_result"] == 0          # min(0, 1): the recognition gate
    assert written["7"]["score"] == pytest.approx((1 + 0.5 + 1) / 3)
    # and it re-scores with no judge at all
    assert dlc(files, judge_cache=str(cache)).score_file(files / "mine.json") == pytest.approx(EXPECTED)


def test_a_killed_run_resumes_and_asks_only_for_the_rest(files):
    cache = files / "mine_eval.json"
    dying = CountingJudge(die_on=2)   # chunks of >= 2 prompts, whole regions: region 7 (4), then dies on 8
    with pytest.raises(KeyboardInterrupt):
        dlc(files, judge=dying, judge_cache=str(cache)).score_file(files / "mine.json")
    kept = strict(cache.read_text())
    assert list(kept) == ["7", "judge_model"] and kept["7"]["response"] == REPLIES["7"]
    again = CountingJudge()
    assert dlc(files, judge=again, judge_cache=str(cache)).score_file(files / "mine.json") == pytest.approx(EXPECTED)
    assert again.prompts == 9 - 4 and again.calls == 2   # regions 8 (2 prompts) and 9 (3)
    nothing = CountingJudge()
    assert dlc(files, judge=nothing, judge_cache=str(cache)).score_file(files / "mine.json") == \
        pytest.approx(EXPECTED)
    assert nothing.calls == 0


def test_a_partial_cache_is_completed_only_where_it_lacks_replies(files):
    """DAM's script replays ``response`` by position and asks for the missing ones; so does regionvlm."""
    data = dam_eval_file()
    del data["8"]
    data["9"] = {**ENTRY_9, "response": REPLIES["9"][:2]}   # the last reply of region 9 missing
    cache = files / "mine_eval.json"
    cache.write_text(json.dumps(data))
    judge = CountingJudge()
    assert dlc(files, judge=judge, judge_cache=str(cache)).score_file(files / "mine.json") == pytest.approx(EXPECTED)
    assert judge.prompts == 2 + 1


def test_refusals(files):
    cache = files / "mine_eval.json"
    cache.write_text(json.dumps({**dam_eval_file(), "judge_model": "gpt-4o"}))
    with pytest.raises(UserError, match=r"mine_eval.json: judge_model: made with 'gpt-4o'"):
        dlc(files, judge=CountingJudge(), judge_cache=str(cache)).score_file(files / "mine.json")
    other_prompt = dam_eval_file()
    other_prompt["7"]["prompt"][1] = other_prompt["7"]["prompt"][1].replace("closest option", "best option")
    cache.write_text(json.dumps(other_prompt))
    with pytest.raises(UserError, match=r"7.prompt\[1\]: differs from the prompt this benchmark sends"):
        dlc(files, judge_cache=str(cache)).score_file(files / "mine.json")
    other_pred = dam_eval_file()
    other_pred["8"]["pred"] = "Two red balls."
    cache.write_text(json.dumps(other_pred))
    with pytest.raises(UserError, match=r"8.pred: judged for another prediction"):
        dlc(files, judge_cache=str(cache)).score_file(files / "mine.json")
    partial = dam_eval_file()
    del partial["8"]
    cache.write_text(json.dumps(partial))
    with pytest.raises(UserError, match=r"answers 7 of 9 judge prompts; the other 2 need a judge"):
        dlc(files, judge_cache=str(cache)).score_file(files / "mine.json")


def test_dam_predictions_and_our_rows_score_alike(files, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"id": int(k), "text": v}) + "\n" for k, v in PREDS.items()))
    judge = CountingJudge()
    ours = dlc(files, judge=judge).score_file(rows)
    assert ours == pytest.approx(EXPECTED) == dlc(files, judge=CountingJudge()).score_file(files / "mine.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**PREDS, "10": "A cat."}))
    with pytest.raises(UserError, match=r"bad.json: 10: not a region of .*qa.json"):
        dlc(files).score_file(bad)
    bad.write_text(json.dumps({**PREDS, "8": "Error: CUDA out of memory"}))
    with pytest.raises(UserError, match=r"bad.json: 8: the description is an error message"):
        dlc(files).score_file(bad)


def test_scoring_needs_only_qa_and_class_names(files):
    b = dlc(files)
    assert b.reference_ids() == ["7", "8", "9"]
    with pytest.raises(UserError, match="generating descriptions needs DLC-Bench's annotations.json"):
        b.samples()


def test_spatial_cache_resumes_and_refuses_another_judge(tmp_path):
    rows = [{"id": f"q{i}", "image_info": {"file_path": "x.jpg", "height": 20, "width": 20},
             "text_q": "How wide is Region [0]?", "qa_info": {"type": "quantitative", "category": "width_data"},
             "bbox": [[0, 0, 5, 5]], "conversations": [{"from": "human", "value": "<image>\nHow wide is <mask>?"},
                                                       {"from": "gpt", "value": f"It is {i + 1} m wide."}]}
            for i in range(5)]
    bench_file = tmp_path / "SpatialRGPT-Bench_v1.json"
    bench_file.write_text(json.dumps(rows))

    class Judge:
        name, batch_size, system = "gpt-4-turbo", 2, "You are a helpful assistant designed to output JSON."

        def __init__(self, die_on=None):
            self.prompts, self.calls, self.die_on = 0, 0, die_on

        def __call__(self, prompts):
            self.calls += 1
            if self.calls == self.die_on:
                raise KeyboardInterrupt
            self.prompts += len(prompts)
            return ['{"answer_in_meters": 2.0, "response_in_meters": 2.0}'] * len(prompts)

    preds = {f"q{i}": {"id": f"q{i}", "text": "2 m"} for i in range(5)}
    cache = tmp_path / "p_judge.json"

    def run(judge):
        b = load_benchmark("spatial", annotations=[str(bench_file)], judge=judge, judge_cache=str(cache))
        return b.evaluate(list(preds.values()))

    with pytest.raises(KeyboardInterrupt):
        run(Judge(die_on=2))
    assert len(strict(cache.read_text())["entries"]) == 2
    judge = Judge()
    got = run(judge)
    assert judge.prompts == 3 and got["quantitative_success"] == 100.0 and got["quantitative_count"] == 5
    written = strict(cache.read_text())
    assert written["format"] == "regionvlm.judge_cache" and written["judge_model"] == "gpt-4-turbo"
    assert written["judge_system"] == Judge.system and set(written["entries"]) == set(preds)
    assert written["entries"]["q0"]["pred"] == "2 m" and len(written["entries"]["q0"]["prompt"]) == 1
    other = Judge()
    other.system = None
    with pytest.raises(UserError, match="judge_system: made with"):
        run(other)


def test_spatial_with_every_answer_empty_is_no_measurement(tmp_path, capsys):
    """Issue 23 item 13: an empty answer is not "yes" and a mean over no parsed answer is null, not 0."""
    from regionvlm.data.synth.writers import write_synthetic

    data = write_synthetic(tmp_path / "synth", n_train=2, n_val=4)
    b = load_benchmark("spatial", annotations=[str(data["spatialrgpt_bench"])])
    pred = tmp_path / "empty.jsonl"
    pred.write_text("".join(json.dumps(b.prediction_row(s, "")) + "\n" for s in b.samples()))
    assert main(["score", "spatial", "--predictions", str(pred), "--annotations", str(data["spatialrgpt_bench"]),
                 "--json"]) == 0
    got = strict(capsys.readouterr().out)
    assert got["qualitative_accuracy"] == 0.0 and got["quantitative_success"] == 0.0
    assert got["unparsed"] == len(b.samples())
    lengths = [k for k in got if k.endswith("/abs_rel")]
    assert lengths and all(got[k] is None and got[k + "_count"] == 0 for k in lengths)
    assert got["quantitative/direction/error_deg"] is None
    assert main(["score", "spatial", "--predictions", str(pred), "--annotations",
                 str(data["spatialrgpt_bench"])]) == 0
    table = capsys.readouterr().out
    assert "abs_rel" in table and "—" in table and "0.00 " not in table.split("abs_rel", 1)[1].split("\n", 1)[0]


def test_strict_json_writers_map_non_finite_to_null(tmp_path):
    import numpy as np

    from regionvlm.data.formats import write_json
    from regionvlm.evaluation.reports import format_value, results_table
    from regionvlm.io import dumps_json

    obj = {"a": math.inf, "b": [float("nan"), 1.5, np.float32("inf")], "c": np.float64(2.0), "d": None}
    assert strict(dumps_json(obj)) == {"a": None, "b": [None, 1.5, None], "c": 2.0, "d": None}
    write_json(tmp_path / "x.json", obj)
    assert strict((tmp_path / "x.json").read_text())["a"] is None
    assert format_value(None) == "—" and format_value(math.nan) == "—" and format_value(1.0) == "1.00"
    assert "| b | abs_rel | — |" in results_table({"b": {"abs_rel": None}})
