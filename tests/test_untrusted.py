"""Issue 23 (items 2, 3, 4, 12, 14, 15) and issue 24 item 7 beyond the exit-2 catalogue of test_bad_inputs.py: what
still works (real refs pickles, aliases within budget, a resumed answers file), the guards' helpers on their own
(a FIFO must not hang), the config dry run that imports nothing, and the YAML layer semantics of null and ``~key``."""

from __future__ import annotations

import json
import os
import pickle
import textwrap
import threading
import time
from pathlib import Path

import pytest

from regionvlm.cli import main
from regionvlm.config import load_config, load_yaml
from regionvlm.errors import ConfigError, UserError

TINY = Path(__file__).resolve().parents[1] / "projects" / "rgpt" / "tiny"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def finishes_within(seconds: float, fn, *args):
    """``fn(*args)`` in a thread; its result or exception, or a failure if it is still running after ``seconds``
    (what a read of a FIFO without a writer would do)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn.__name__} still running after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


# -- item 2: refs pickles ---------------------------------------------------------------------------------------
REFS = [{"ref_id": 7, "ann_id": 70, "image_id": 700, "split": "val", "category_id": 3,
         "file_name": "COCO_train2014_000000000700_70.jpg", "sent_ids": [1, 2],
         "sentences": [{"sent_id": 1, "sent": "the man on the left", "raw": "The man on the left.",
                        "tokens": ["the", "man", "on", "the", "left"]},
                       {"sent_id": 2, "sent": "café au lait", "raw": "Café au lait", "tokens": ["café"]}],
         "score": 0.5, "bbox": (1.0, 2.0, 3.0, 4.0), "flags": {1, 2}, "frozen": frozenset({3}), "raw": b"\x00\xff",
         "none": None, "yes": True, "big": 2**70}]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_refs_of_plain_data_load_at_every_protocol(tmp_path, protocol):
    from regionvlm.data.formats import read_refs

    path = tmp_path / "refs(umd).p"
    path.write_bytes(pickle.dumps(REFS, protocol=protocol))
    assert read_refs(path) == REFS


def test_a_python2_refs_pickle_loads():
    """What the refer API's refs(umd).p files are: Python 2 ``str`` (SHORT_BINSTRING) at protocol 2, and
    ``__builtin__`` for sets; read as latin-1, as `pickle.load(encoding="latin1")` did."""
    from regionvlm.guards import load_plain_pickle

    py2 = (b"\x80\x02]q\x00}q\x01(U\x05splitq\x02U\x03valq\x03U\x05sentsq\x04]q\x05U\x05caf\xe9 q\x06aU\x03setq\x07"
           b"c__builtin__\nset\nq\x08]q\tK\x01a\x85q\nRq\x0bua.")
    assert load_plain_pickle(py2) == [{"split": "val", "sents": ["café "], "set": {1}}]


def test_the_synthetic_refs_file_loads(tiny_workspace):
    from regionvlm.data.formats import read_refs

    refs = read_refs(tiny_workspace / "data" / "synth" / "refcocog" / "refs(umd).p")
    assert refs and all(r["sentences"] for r in refs)


@pytest.mark.parametrize("payload", [
    b"cos\nsystem\n(S'touch MARKER'\ntR.",                  # os.system via REDUCE
    b"cbuiltins\ngetattr\n(cbuiltins\nobject\nS'x'\ntR.",    # getattr
    b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x8c\x04exec\x93.",  # STACK_GLOBAL exec
    b"(I1\nP42\n.",                                           # a persistent id
    b"c_codecs\nencode\n(S'x'\nS'rot13'\ntR.",               # a codec other than latin-1
])
def test_a_pickle_naming_code_is_refused_before_it_runs(tmp_path, payload, monkeypatch):
    from regionvlm.guards import load_plain_pickle

    monkeypatch.chdir(tmp_path)
    with pytest.raises(pickle.UnpicklingError):
        load_plain_pickle(payload)
    assert not (tmp_path / "MARKER").exists()


# -- item 12: region files are read only when regular, before the model loads -------------------------------------
@pytest.mark.parametrize("region", ["mask:{fifo}", "rle:{fifo}", "rle:/dev/zero", "mask:/dev/zero"])
def test_predict_with_a_fifo_or_device_region_returns_at_once(tiny_workspace, tiny_export, tmp_path, region, capsys):
    os.mkfifo(tmp_path / "pipe")
    image = tiny_workspace / "data" / "synth" / "images" / "synth_000025.png"
    argv = ["predict", "--model", str(tiny_export[3]), "--image", str(image), "--prompt", "<region1>?",
            "--region", region.format(fifo=tmp_path / "pipe"), "--device", "cpu"]
    assert finishes_within(60, main, argv) == 2
    assert "is not a regular file" in capsys.readouterr().err


def test_card_limits_pass_the_tiny_card_and_name_each_bound(tiny_export):
    import copy

    from regionvlm.card import read_card
    from regionvlm.guards import MAX_IMAGE_SIDE, check_card_limits

    card = read_card(tiny_export[3])
    check_card_limits(card, "config.yaml")
    for path, value in [(("processor", "image_size"), MAX_IMAGE_SIDE + 1), (("processor", "image_size"), 0),
                        (("processor", "image_size"), "big"), (("processor", "max_length"), 2**40),
                        (("generation", "max_new_tokens"), -1), (("generation", "num_beams"), True)]:
        bad = copy.deepcopy(card)
        bad[path[0]][path[1]] = value
        with pytest.raises(UserError, match=rf"config.yaml {path[0]}\.{path[1]}: "):
            check_card_limits(bad, "config.yaml")
    edge = copy.deepcopy(card)
    edge["processor"]["image_size"] = MAX_IMAGE_SIDE
    check_card_limits(edge, "config.yaml")


def test_output_checks(tmp_path):
    from regionvlm.guards import check_output_file

    (tmp_path / "in.jsonl").write_text("x\n")
    assert check_output_file(tmp_path / "new" / "deeper" / "out.jsonl", "--out") == tmp_path / "new/deeper/out.jsonl"
    assert not (tmp_path / "new").exists()   # checking creates nothing
    (tmp_path / "link").symlink_to(tmp_path / "in.jsonl")
    with pytest.raises(UserError, match="same file as --input"):
        check_output_file(tmp_path / "link", "--out", inputs={"--input": tmp_path / "in.jsonl"})
    with pytest.raises(UserError, match="same file as --input"):
        check_output_file(tmp_path / "sub" / ".." / "in.jsonl", "--out", inputs={"--input": tmp_path / "in.jsonl"})


# -- item 4: resuming only our own answers ----------------------------------------------------------------------
@pytest.fixture()
def questions(tiny_workspace, tiny_export, tmp_path):
    image = tiny_workspace / "data" / "synth" / "images" / "synth_000025.png"
    rows = [{"id": f"q{i}", "image": str(image), "regions": [{"bbox": [2 + i, 2, 20, 20]}],
             "conversations": [{"from": "human", "value": "<image>\nWhat is <region1>?"}]} for i in range(3)]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ["predict", "--model", str(tiny_export[3]), "--input", str(inp), "--out", str(out),
            "--max-new-tokens", "2", "--device", "cpu"], out, rows


def test_a_complete_last_row_without_its_newline_is_kept_and_the_file_continues(questions, capsys):
    args, out, rows = questions
    assert main(args) == 0
    lines = out.read_text().splitlines(keepends=True)
    out.write_text(lines[0] + lines[1].rstrip("\n"))   # killed between a row and its newline
    assert main(args) == 0
    assert "1 answered, 2 already done" in capsys.readouterr().out
    again = out.read_text()
    assert again.startswith(lines[0] + lines[1]) and again.endswith("\n")
    assert [json.loads(line)["id"] for line in again.splitlines()] == ["q0", "q1", "q2"]


def test_a_torn_first_row_is_recognised_as_ours_and_cut(questions, capsys):
    from regionvlm.commands.predict import answer_line

    args, out, rows = questions
    line = answer_line(rows[0], rows[0]["conversations"][0]["value"], "an answer")
    out.write_text(line[: len(line) - 12])   # killed while writing the very first row
    assert main(args) == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["q0", "q1", "q2"]


def test_a_foreign_file_is_never_truncated(questions, capsys):
    args, out, _ = questions
    for content in ('{"totally": "mine"}', "draft notes", '{"id": "q0", "answer": "x"}\n{"id": "elsewhere"'):
        out.write_text(content)
        code = main(args)
        if content.startswith('{"id": "q0"'):
            # a row of ours, then a torn line: the torn line goes, our row stays
            assert code == 0 and out.read_text().startswith('{"id": "q0", "answer": "x"}\n')
        else:
            assert code == 2 and out.read_text() == content, capsys.readouterr().err


# -- item 14: configs -------------------------------------------------------------------------------------------
def test_an_alias_bomb_is_refused_at_once(tmp_path):
    bomb = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    bomb += [f"{n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]" for p, n in zip("abcdefgh", "bcdefghi")]
    text = "\n".join(bomb) + "\n"
    assert len(text) < 600
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="alias bomb"):
        load_yaml(text, "bomb.yaml")
    assert time.perf_counter() - start < 2.0   # on main it ran for minutes (9**9 values)


def test_aliases_within_the_budget_and_merge_keys_still_work():
    data = load_yaml(textwrap.dedent("""
        base: &node {type: coco_instances, ann_file: a.json, image_root: imgs}
        train: [*node, *node, {<<: *node, ann_file: b.json}]
    """), "ok.yaml")
    assert data["train"][2] == {"type": "coco_instances", "ann_file": "b.json", "image_root": "imgs"}
    assert data["train"][0] == data["base"]


def test_file_dirname_is_substituted_after_parsing(tmp_path):
    folder = tmp_path / "my data #1" / "a: b ${oc.env:HOME}"
    cfg = load_config(write(folder / "c.yaml", """
        output: {root: "{{fileDirname}}/runs", name: x}
        data: {note: "{{fileDirname}}"}
    """))
    assert cfg.output.root == f"{folder.resolve()}/runs"
    assert cfg.data.note == str(folder.resolve())   # '#' is no comment, ': ' no mapping, '${' no interpolation


def test_a_deletion_marker_drops_replaces_or_restores(tmp_path):
    write(tmp_path / "base.yaml", """
        model: {projector: {type: mlp, depth: 2}, llm: {type: hf_causal_lm, pretrained: x}}
        optim: {lr: 0.5}
        eval: {benchmarks: {coco_cls: {limit: 3}, pope: {limit: 4}}}
    """)
    cfg = load_config(write(tmp_path / "child.yaml", """
        _base_: base.yaml
        model:
          ~projector:
          projector: {type: linear}
          llm: {pretrained: null}
        optim: {~lr: }
        eval: {benchmarks: {~coco_cls: , pope: }}
    """))
    assert dict(cfg.model.projector) == {"type": "linear"}        # replaced, not merged into
    assert cfg.model.llm.pretrained is None                        # null is a value, never a deletion
    assert cfg.optim.lr == 1.0e-4                                  # a schema key: back to its default
    assert list(cfg.eval.benchmarks) == ["pope"] and cfg.eval.benchmarks.pope is None


def test_env_variables_that_are_not_secrets_still_interpolate(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("MY_DATA_ROOT", "/data")
    cfg = load_config(write(tmp_path / "c.yaml", """
        data: {root: "${oc.env:MY_DATA_ROOT}", note: "${oc.env:TOKENIZERS_PARALLELISM}"}
    """))
    assert cfg.data.root == "/data"
    for name in ("HF_TOKEN", "OPENAI_API_KEY", "MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY"):
        with pytest.raises(ConfigError, match=f"{name}.*looks like a secret"):
            load_config(tmp_path / "c.yaml", [f"data.key=${{oc.env:{name},none}}"])


@pytest.mark.parametrize("seed", [0, 2**32 - 1])
def test_seed_bounds_are_accepted(seed):
    assert load_config(TINY / "stage1.yaml", [f"seed={seed}"]).seed == seed


# -- item 3: the dry run imports nothing unless asked -----------------------------------------------------------
@pytest.fixture()
def config_with_imports(tmp_path):
    marker = tmp_path / "IMPORTED"
    write(tmp_path / "myplugin_issue23.py", f"""
        open({str(marker)!r}, "w").close()
        from regionvlm.registry import PROJECTORS

        @PROJECTORS.register("issue23_proj")
        def issue23_proj(in_dim: int = 0, out_dim: int = 0, depth: int = 2):
            import torch
            return torch.nn.Linear(in_dim, out_dim)
    """)
    path = write(tmp_path / "c.yaml", f"""
        _base_: {TINY / "stage1.yaml"}
        imports: [myplugin_issue23]
        model:
          projector: {{type: issue23_proj, depth: 3}}
    """)
    return path, marker


def test_config_dry_run_checks_without_importing(config_with_imports, capsys):
    path, marker = config_with_imports
    assert main(["config", str(path)]) == 0
    err = capsys.readouterr().err
    assert not marker.exists()
    assert "note: model.projector.type: not checked" in err and "'issue23_proj'" in err and "--imports" in err
    # everything else is still checked
    assert main(["config", str(path), "model.llm.bogus=1"]) == 2
    assert "model.llm.bogus" in capsys.readouterr().err and not marker.exists()
    # a misspelt built-in name in such a config is not an error either, but the note offers the close name
    assert main(["config", str(path), "model.feature_refiner.type=rgpt_deconf"]) == 0
    assert "did you mean 'rgpt_deconv'" in capsys.readouterr().err


def test_config_dry_run_with_imports_imports_and_checks(config_with_imports, capsys):
    path, marker = config_with_imports
    assert main(["config", str(path), "--imports", "model.projector.dept=3"]) == 2
    assert marker.exists() and "did you mean 'depth'" in capsys.readouterr().err


def test_a_config_without_imports_still_reports_unknown_names(capsys):
    assert main(["config", str(TINY / "stage1.yaml"), "model.projector.type=mlp9"]) == 2
    assert "no projector named 'mlp9'" in capsys.readouterr().err


# -- item 15: datagen templates declared by a captioner ---------------------------------------------------------
def test_datagen_accepts_every_declared_field():
    from regionvlm.datagen.settings import check_template

    check_template("{global_caption}, {class_name!r:>10} {{literal}}", ("global_caption", "class_name"), "k")
    with pytest.raises(ConfigError, match=r"k: \{caption\}: unknown field; did you mean 'caption_'"):
        check_template("{caption}", ("caption_",), "k")
