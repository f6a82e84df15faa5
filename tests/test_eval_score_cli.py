"""``regionvlm score`` on small files: JSON and table output, options, errors, same numbers as eval's path."""

from __future__ import annotations

import argparse
import json

import pytest

from regionvlm.commands import score
from regionvlm.errors import DataError
from regionvlm.evaluation.benchmark import load_benchmark
from regionvlm.evaluation.predictions import write_predictions


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from regionvlm.data.synth.writers import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("synth"), n_train=2, n_val=3)


def parse(argv):
    parser = argparse.ArgumentParser(prog="regionvlm score")
    score.add_arguments(parser)
    return parser.parse_args(argv)


def test_json_output_equals_eval_path(data, tmp_path, capsys):
    b = load_benchmark("pope", annotations=[str(data["pope_val"])])
    rows = [b.prediction_row(s, "No, there is not." if i % 3 else "Yes.") for i, s in enumerate(b.samples())]
    write_predictions(tmp_path / "p.jsonl", rows)
    assert score.run(parse(["pope", "--predictions", str(tmp_path / "p.jsonl"),
                            "--annotations", str(data["pope_val"]), "--json"])) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(b.evaluate(rows))


def test_table_output_and_partial(data, tmp_path, capsys):
    b = load_benchmark("pope", annotations=[str(data["pope_val"])])
    write_predictions(tmp_path / "p.jsonl", [b.prediction_row(s, "yes") for s in b.samples()[:2]])
    argv = ["pope", "--predictions", str(tmp_path / "p.jsonl"), "--annotations", str(data["pope_val"])]
    with pytest.raises(DataError, match="missing predictions for"):
        score.run(parse(argv))
    assert score.run(parse(argv + ["--allow-partial"])) == 0
    out, err = capsys.readouterr()
    assert "yes_ratio" in out and "coverage" in out and "partial coverage: 2 of" in err


def test_caption_benchmark_with_option(data, tmp_path, capsys):
    """refcocog_caption through the CLI: the first reference as prediction gives ROUGE-L 100 (pycocoevalcap's
    ROUGE-L takes the best reference); SPICE is skipped with a one-line note when its jars are missing."""
    from regionvlm.evaluation.captions import spice_unavailable_reason

    ann = [str(data["refcocog_refs"]), str(data["refcocog_instances"])]
    b = load_benchmark("refcocog_caption", annotations=ann, split="train", per="object")
    write_predictions(tmp_path / "c.jsonl", [b.prediction_row(s, s["target"]["captions"][0]) for s in b.samples()])
    assert score.run(parse(["refcocog_caption", "--predictions", str(tmp_path / "c.jsonl"), "--annotations", *ann,
                            "-o", "split=train", "-o", "per=object", "--json"])) == 0
    out, err = capsys.readouterr()
    got = json.loads(out)
    assert got["ROUGE-L"] == pytest.approx(100) and got["CIDEr"] > 0 and got["num_samples"] == len(b.samples())
    if spice_unavailable_reason():
        assert "SPICE" not in got and "note: SPICE skipped:" in err


def test_unknown_benchmark_and_bad_option(data):
    from regionvlm.errors import ConfigError, RegistryError

    with pytest.raises(RegistryError, match="did you mean 'pope'"):
        score.run(parse(["popee", "--predictions", "x", "--annotations", "y"]))
    with pytest.raises(ConfigError, match="override 'split': expected key=value"):
        score.run(parse(["pope", "--predictions", "x", "--annotations", "y", "-o", "split"]))
