"""`regionvlm predict --input/--out` resumption: what an earlier run left in the output file."""

import json

import pytest
from PIL import Image

from regionvlm.cli import main


@pytest.fixture()
def batch_args(tiny_export, tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (48, 40), (200, 30, 30)).save(image)
    rows = [{"id": f"q{i}", "image": str(image), "regions": [{"bbox": [2 + i, 2, 20, 20]}],
             "conversations": [{"from": "human", "value": "<image>\nWhat is <region1>?"}]} for i in range(4)]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ["predict", "--model", str(tiny_export[3]), "--input", str(inp), "--out", str(out), "--batch-size", "2",
            "--max-new-tokens", "2"], out


def test_a_torn_last_line_is_redone_and_the_rest_kept_byte_for_byte(batch_args):
    args, out = batch_args
    assert main(args) == 0
    lines = out.read_text().splitlines(keepends=True)
    kept = "".join(lines[:2])
    out.write_text(kept + '{"id": "q2", "ans')  # killed mid-write of the third row
    assert main(args) == 0
    text = out.read_text()
    assert text.startswith(kept)
    assert sorted(json.loads(line)["id"] for line in text.splitlines()) == ["q0", "q1", "q2", "q3"]


@pytest.mark.parametrize("bad", ["not json\n", '["a list"]\n', '{"no_id": 1}\n'])
def test_a_malformed_complete_line_is_an_error_and_nothing_is_rewritten(batch_args, bad, capsys):
    args, out = batch_args
    before = '{"id": "q0", "answer": "x"}\n' + bad + '{"id": "q1", "answer": "y"}\n'
    out.write_text(before)
    assert main(args) == 2
    assert f"{out}: line 2:" in capsys.readouterr().err
    assert out.read_text() == before
