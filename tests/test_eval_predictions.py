"""Prediction files: every bad input is one DataError naming the file and line; partial coverage is explicit."""

from __future__ import annotations

import json

import pytest

from regionvlm.errors import DataError
from regionvlm.evaluation.predictions import read_predictions, write_predictions

IDS = ["1", "2", "3"]


def _write(tmp_path, lines):
    p = tmp_path / "preds.jsonl"
    p.write_text("".join(line + "\n" for line in lines))
    return p


def _rows(*ids):
    return [json.dumps({"id": i, "text": f"answer {i}"}) for i in ids]


def test_valid_file_roundtrip(tmp_path):
    p = tmp_path / "out" / "preds.jsonl"
    write_predictions(p, [{"id": i, "text": "x"} for i in (1, 2, 3)])
    got = read_predictions(p, IDS)
    assert sorted(got.rows) == IDS and got.coverage == 1.0
    assert not list((tmp_path / "out").glob(".*tmp"))   # atomic write leaves no temp file


@pytest.mark.parametrize("lines,pattern", [
    (_rows(1, 2) + ["{not json"], r"preds\.jsonl: line 3: invalid JSON"),
    (_rows(1) + ['["a list"]'] + _rows(2, 3), r"preds\.jsonl: line 2: expected a JSON object"),
    (_rows(1, 2) + ['{"id": 3}'], r"preds\.jsonl: line 3: missing field 'text'"),
    (['{"text": "x"}'] + _rows(2, 3), r"preds\.jsonl: line 1: missing field 'id'"),
    (_rows(1) + ['{"id": 2, "text": 5}'] + _rows(3), r"preds\.jsonl: line 2: 'text' must be a string"),
    (_rows(1, 2, 3, 2), r"preds\.jsonl: line 4: duplicate id '2' \(first at line 2\)"),
    (_rows(1, 2, 3, 9), r"preds\.jsonl: line 4: unknown id '9'"),
    (_rows(1), r"preds\.jsonl: missing predictions for 2 of 3 ids \(e\.g\. '2', '3'\); pass --allow-partial"),
])
def test_bad_files_one_clear_error(tmp_path, lines, pattern):
    with pytest.raises(DataError, match=pattern) as exc:
        read_predictions(_write(tmp_path, lines), IDS)
    assert "\n" not in str(exc.value)


def test_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path):
    p = _write(tmp_path, _rows(1) + [""] + _rows(2, 2))
    with pytest.raises(DataError, match="line 4: duplicate id '2' \\(first at line 3\\)"):
        read_predictions(p, IDS)


def test_partial_coverage_only_when_allowed(tmp_path):
    p = _write(tmp_path, _rows(1, 3))
    got = read_predictions(p, IDS, allow_partial=True)
    assert sorted(got.rows) == ["1", "3"] and got.coverage == pytest.approx(2 / 3)


def test_required_extra_fields(tmp_path):
    p = _write(tmp_path, _rows(1, 2, 3))
    with pytest.raises(DataError, match="line 1: missing field 'candidates'"):
        read_predictions(p, IDS, required=("candidates",))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        read_predictions(tmp_path / "nope.jsonl", IDS)


def test_eval_decodes_with_the_card_settings_under_the_eval_configs(tiny_workspace, tiny_export, monkeypatch,
                                                                    tmp_path):
    """The eval config's `generation:` decides (the same protocol for every model compared); without one
    (`~generation`), the model's own card does."""
    from pathlib import Path

    import regionvlm.evaluation.runner as runner
    from regionvlm import card as hub
    from regionvlm.cli import main

    seen = []
    monkeypatch.setattr(runner, "evaluate", lambda module, trainer, **kw: seen.append(dict(module.generation)) or {})
    eval_yaml = Path(__file__).resolve().parents[1] / "projects" / "rgpt" / "tiny" / "eval_scope.yaml"
    args = ["eval", str(eval_yaml), "--model", str(tiny_export[3])]
    card = {**tiny_export[2]["generation"], "num_beams": 3}
    read = hub.read_card  # the card, with decoding settings of its own
    monkeypatch.setattr(hub, "read_card", lambda folder: {**read(folder), "generation": card})
    assert main([*args, f"eval.out_dir={tmp_path / 'a'}", "~generation"]) == 0
    assert main([*args, f"eval.out_dir={tmp_path / 'b'}", "generation.max_new_tokens=3"]) == 0
    assert seen[0] == card
    assert seen[1] == {"max_new_tokens": 3, "num_beams": 1, "do_sample": False, "temperature": 1.0, "top_p": 1.0}
