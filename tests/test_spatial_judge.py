"""SpatialRGPT-Bench's judge path: the reference's prompts (few-shot examples included) reach the judge as
evaluate_spatial_with_gpt4.py builds them, and its JSON replies are scored as the reference scores them."""

from __future__ import annotations

import hashlib
import json

import pytest

from regionvlm.evaluation.benchmark import load_benchmark

# sha256 of the reference's text, computed from SpatialRGPT (commit 16715d4): the 13 files
# scripts/srgpt/eval/prompt_templates/*.txt, each .strip()-ed, concatenated in name order; and the full prompts
# evaluate_spatial_with_gpt4.py builds for QUESTION/ANSWER/RESPONSE below (its own functions, the OpenAI call
# cut off, run against those files)
EXAMPLE_FILES_SHA256 = "6a98500325009d6fa87a23e4a7534e489e50acdd824275372fec3cbcbd3f8095"
QUESTION, ANSWER, RESPONSE = "Is Region [0] to the left of Region [1]?", "Yes, it is.", "No."
PROMPT_SHA256 = {  # every category the reference has a prompt for (each *_choice shares choice.txt)
    "direction": "d8d6336132ac59942d6a7a59e3e763a0fb850ae199c5f599c7f6c8217e3ca5ff",
    "width_data": "450009b558e6c94d3389a9fd427e1cbf20170a404814fa4f7f370e2450f0467b",
    "above_predicate": "82e46a1486b55c97aa5c1e9f6306c59ff8ba4a12e8a0084a2ccaeb597397cc5d",
    "behind_predicate": "08a1bc571ec3155810ab893fb299295d99ccfc7b0305ca1f45f3d36439895cca",
    "below_predicate": "b2afbdf8d3840038237c104e1326e365484212cc667ee20838f3e9b5871dc8ec",
    "big_predicate": "7096d22d7dfe4df67ac7c268a5b584fedf57c988b3a91eb3a8f2767be821e204",
    "front_predicate": "e3ec34b794f2ddd4a13414278b94f983b78b03972f23dc0322a78646f66adc4d",
    "left_predicate": "4799f7c20609be74ff48516ac8c13354283f4862e432428d9129277fe8cb4a2f",
    "right_predicate": "3a9a3b7bbc106a8d2f7ff07812477db586af245fc43ac957637fd86d58caf51f",
    "short_predicate": "0123d49b6c73b933d4feaa6296b1ac9a6ed56866ed125c980a522f7c8f6a372c",
    "small_predicate": "17329fd53d9e08cb5a8f6efc93aeec6609b1e404d69cacf1822cbb51165d7deb",
    "tall_predicate": "ab5d08b1eccfc83f8e316ba575d735b44c100d92ba591c750ca6efdffed8cdaa",
    "thin_predicate": "d21bd4c036ffa4e69a449168574bb8f6d09cae8a2dc7aca5ca755ba62d8bfba0",
    "wide_predicate": "bbad43116e61cbf28755a79a3e1bd6ba08f70ce9aa86cbfa22653344e04d8c84",
    "big_choice": "b75a29b30d5c91341a8dbb1490f1720cc8790ab7777fabdf0fe2a84a57f3156e",
    "left_choice": "b75a29b30d5c91341a8dbb1490f1720cc8790ab7777fabdf0fe2a84a57f3156e"}
FILES = ("above_predicate", "behind_predicate", "below_predicate", "big_predicate", "choice", "front_predicate",
         "left_predicate", "right_predicate", "short_predicate", "small_predicate", "tall_predicate",
         "thin_predicate", "wide_predicate")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_prompts_are_the_reference_text():
    from regionvlm.benchmarks.spatial_judge import QUALITATIVE_EXAMPLES, examples_text, spatial_judge_prompt

    assert sorted(QUALITATIVE_EXAMPLES) == list(FILES)
    # each file holds "{question}" where the reference fills the question in: render with it left as is
    files = "".join(examples_text("any_choice" if f == "choice" else f, "{question}") for f in FILES)
    assert _sha(files) == EXAMPLE_FILES_SHA256
    for category, sha in PROMPT_SHA256.items():
        kind = "quantitative" if category in ("direction", "width_data") else "qualitative"
        prompt = spatial_judge_prompt({"type": kind, "category": category}, QUESTION, ANSWER, RESPONSE)
        assert _sha(prompt) == sha, category
    # every *_choice category shares choice.txt, whose questions are its own; predicates repeat the bench's
    tall = spatial_judge_prompt({"type": "qualitative", "category": "tall_choice"}, QUESTION, ANSWER, RESPONSE)
    assert "Question: Who is taller, Region [0] or Region [1]?" in tall and tall.count(QUESTION) == 1
    left = spatial_judge_prompt({"type": "qualitative", "category": "left_predicate"}, QUESTION, ANSWER, RESPONSE)
    assert left.count(f"Question: {QUESTION}\n") == 6 and left.count('"your_mark": ') == 5
    # braces in an answer reach the judge as written (the reference's second .format would fail on them)
    braces = spatial_judge_prompt({"type": "quantitative", "category": "distance_data"}, "q {0}", "{a}", "{}")
    assert braces.endswith("Your Turn:\nQuestion: q {0}\nAnswer: {a}\nResponse: {}\n\n")
    assert spatial_judge_prompt({"type": "qualitative", "category": "near_predicate"}, "q", "a", "r") is None


def _bench_file(tmp_path):
    def row(i, text_q, human, gpt, qa_type, category):
        return {"id": i, "image_info": {"file_path": "img.jpg", "height": 20, "width": 20}, "text_q": text_q,
                "qa_info": {"type": qa_type, "category": category}, "bbox": [[0, 0, 5, 5], [10, 10, 15, 15]],
                "conversations": [{"from": "human", "value": f"<image>\n{human}"}, {"from": "gpt", "value": gpt}]}

    rows = [row("a", "Is Region [0] to the left of Region [1]?", "Is <mask> to the left of <mask>?",
                "Correct, Region [0] is to the left of Region [1].", "qualitative", "left_predicate"),
            row("b", "Which is taller, Region [0] or Region [1]?", "Which is taller, <mask> or <mask>?",
                "Region [1] is taller.", "qualitative", "tall_choice"),
            row("c", "How wide is Region [0]?", "How wide is <mask>?", "It is 2 feet wide.",
                "quantitative", "width_data"),
            row("d", "If you are at Region [0], where will you find Region [1]?",
                "If you are at <mask>, where will you find <mask>?", "Around the 3 o'clock direction.",
                "quantitative", "direction"),
            row("e", "Is Region [0] near Region [1]?", "Is <mask> near <mask>?", "Yes.",
                "qualitative", "near_predicate"),
            row("f", "How tall is Region [0]?", "How tall is <mask>?", "1 m.", "quantitative", "height_data")]
    path = tmp_path / "SpatialRGPT-Bench_v1.json"
    path.write_text(json.dumps(rows))
    return str(path)


def test_fake_judge_sees_the_reference_prompts_and_is_scored_as_there(tmp_path):
    from regionvlm.benchmarks.spatial_judge import spatial_judge_prompt

    seen: list[str] = []
    # replies as a JSON-mode judge writes them, one without braces (the few-shot format, which we read too)
    replies = {"left_predicate": '{"your_mark": 1}', "tall_choice": '{"your_mark": 0}',
               "width_data": '"answer_in_meters": 0.61, "response_in_meters": 0.5',
               "direction": '{"answer_direction": 3, "response_direction": 5}',
               "height_data": '{"answer_in_meters": 1.0}'}

    def judge(prompts):
        seen.extend(prompts)
        return [next(v for k, v in replies.items() if _category_of(p) == k) for p in prompts]

    b = load_benchmark("spatial", annotations=[_bench_file(tmp_path)], judge=judge)
    rows = {r["id"]: r for r in json.loads((tmp_path / "SpatialRGPT-Bench_v1.json").read_text())}
    response = {"a": "Yes.", "b": "Region [1].", "c": "Half a metre.", "d": "At 5 o'clock.", "e": "No.",
                "f": "2 m."}
    got = b.evaluate([{"id": k, "text": v} for k, v in response.items()])
    # the judge got exactly the reference's prompt for each question it can build one for (not "e")
    expected = [spatial_judge_prompt(rows[k]["qa_info"], rows[k]["text_q"], rows[k]["conversations"][1]["value"],
                                     response[k]) for k in "abcdf"]
    assert seen == expected
    assert seen[0].startswith("\nYou should help me to evaluate the response given the question and the correct "
                              "answer.\nTo mark a response") and seen[0].endswith("Response: Yes.\n    ")
    assert "Example 1:\nQuestion: Is Region [0] to the left of Region [1]?\nAnswer: Yes, Region [0] is to the " \
           "left of Region [1]." in seen[0]
    # left 1/1; tall 0/1 (0 marks); near: no example file, a match failure scored 0 in its own group
    assert got["qualitative/left/right"] == 100 and got["qualitative/tall/short"] == 0
    assert got["qualitative_accuracy"] == pytest.approx(100 / 3)
    # width: 0.5 vs 0.61 is inside ±25 %; direction 3 vs 5: two hours off → fail, 60°; height: no response key
    assert got["quantitative/width/success"] == 100
    assert got["quantitative/width/abs_rel"] == pytest.approx(0.11 / 0.61)
    assert got["quantitative/direction/success"] == 0 and got["quantitative/direction/error_deg"] == 60
    assert got["quantitative/height/success"] == 0 and got["quantitative_success"] == pytest.approx(100 / 3)
    assert got["unparsed"] == 2


def _category_of(prompt: str) -> str:
    if "clock directions" in prompt:
        return "direction"
    if "to meters" in prompt:
        return "height_data" if "How tall" in prompt else "width_data"
    return "tall_choice" if "Which is taller" in prompt else "left_predicate"


def test_openai_judge_can_call_as_the_spatial_reference(monkeypatch):
    """gpt-4-turbo as evaluate_spatial_with_gpt4.py calls it: system message, JSON mode, no temperature or
    max_tokens (the API's defaults)."""
    import urllib.request

    from regionvlm.benchmarks.spatial_judge import JUDGE_SYSTEM

    from regionvlm.registry import JUDGES

    sent = []

    class Reply:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def read(self):
            return json.dumps({"choices": [{"message": {"content": '{"your_mark": 1}'}}]}).encode()

    def fake_urlopen(req, timeout):
        sent.append(json.loads(req.data))
        return Reply()

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    judge = JUDGES.build({"type": "openai_judge", "model": "gpt-4-turbo", "system": JUDGE_SYSTEM,
                          "json_mode": True, "temperature": None, "max_tokens": None})
    assert judge(["P"]) == ['{"your_mark": 1}']
    assert sent == [{"model": "gpt-4-turbo", "response_format": {"type": "json_object"},
                     "messages": [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": "P"}]}]
