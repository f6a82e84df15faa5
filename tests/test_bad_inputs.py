"""The bad-input catalogue (issue 12; the table in docs/errors.md): each case runs the real CLI and must end with
exit code 2 and one ``error:`` line naming the file and the field or line, with no traceback and no partial
output left behind. Images that are merely unusual (grayscale, RGBA, 16-bit, palette, EXIF-rotated) must work."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from regionvlm.cli import main

TINY_STAGE1 = "projects/rgpt/tiny/stage1.yaml"
TINY_EVAL = "projects/rgpt/tiny/eval.yaml"
IMAGE = "synth_000025.png"   # a validation image of the synthetic set: 128×128 RGB


@dataclass
class Env:
    """What a case builds its files in and runs against."""

    tmp: Path            # a fresh folder per case
    data: Path           # the synthetic set (tiny_workspace/data/synth)
    export: Path         # a random-init tiny export
    outputs: list[Path] = field(default_factory=list)   # paths that must not exist after the failed run

    def write(self, name: str, text: str | bytes) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    def output(self, name: str) -> str:
        path = self.tmp / name
        self.outputs.append(path)
        return str(path)

    # -- predict in batch mode: the cheapest path through image decoding, regions, prompts and the collator --
    def predict_rows(self, rows: list[dict], image_root: str | None = None) -> list[str]:
        inp = self.write("questions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        return ["predict", "--model", str(self.export), "--input", inp, "--out", self.output("answers.jsonl"),
                "--image-root", image_root or str(self.data / "images"), "--device", "cpu"]

    # -- score: predictions and annotations, no model --
    def score(self, predictions: str, annotations: str | None = None) -> list[str]:
        ann = annotations or str(self.data / "annotations" / "instances_val.json")
        return ["score", "coco_cls", "--predictions", predictions, "--annotations", ann]


def row(image: str = IMAGE, regions: list | None = None, question: str = "<image>\nWhat is <region1>?",
        id: str = "q1") -> dict:
    regions = [{"bbox": [10, 10, 30, 30]}] if regions is None else regions
    return {"id": id, "image": image, "regions": regions, "conversations": [{"from": "human", "value": question}]}


def val_predictions(env: Env, edit: Callable[[list[dict]], list] | None = None) -> str:
    """A complete, valid coco_cls predictions file of the synthetic validation set, optionally edited."""
    anns = json.loads((env.data / "annotations" / "instances_val.json").read_text())["annotations"]
    rows: list = [{"id": a["id"], "text": "red circle"} for a in anns if not a.get("iscrowd")]
    if edit:
        rows = edit(rows)
    return env.write("predictions.jsonl", "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def bomb_png() -> bytes:
    """A 100 000 × 100 000 grayscale PNG header in a ~70-byte file: the shape of a decompression bomb."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def line_png(width: int, height: int) -> bytes:
    """A real width×height grayscale PNG (all black) in ~100 bytes: small in w·h, huge once padded to a square."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = b"".join(b"\0" + b"\0" * width for _ in range(height))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def escaping_checkpoint(env: Env, name: str) -> str:
    """A checkpoint whose tokenizer files name a path outside the folder they are unpacked into."""
    target = Path(name if name.startswith("/") else env.tmp / "unpacked" / name)
    env.outputs.append(target.resolve() if not name.startswith("/") else target)
    return checkpoint(env, lambda c: c["tokenizer_files"].update({name: b"written by a checkpoint"}))


def remote_code_model(env: Env) -> str:
    """A local model folder whose config asks for its own Python code (``auto_map``)."""
    d = env.tmp / "remote"
    shutil.copytree("projects/rgpt/tiny/tokenizer", d)
    (d / "config.json").write_text(json.dumps({"model_type": "evil", "architectures": ["Evil"],
                                               "auto_map": {"AutoConfig": "evil.EvilConfig",
                                                            "AutoModelForCausalLM": "evil.Evil"}}))
    (d / "evil.py").write_text(f"open({str(env.tmp / 'PWNED')!r}, 'w').close()\n")
    env.outputs.append(env.tmp / "PWNED")
    return str(d)


def checkpoint(env: Env, edit: Callable[[dict], None]) -> str:
    """A checkpoint shaped like `regionvlm train`'s (config, tokenizer files, state dict) from the tiny export,
    edited by ``edit``; saved with plain tensors and containers only."""
    from safetensors.torch import load_file

    from regionvlm.card import read_card

    tok = {p.name: p.read_bytes() for p in env.export.iterdir() if p.name.startswith("tokenizer")}
    state = {f"model.{k}": v for k, v in load_file(env.export / "model.safetensors").items()}
    ckpt = {"hyper_parameters": {"config": {"model": read_card(env.export)["model"]}},
            "tokenizer_files": tok, "state_dict": state}
    edit(ckpt)
    path = env.tmp / "run.ckpt"
    torch.save(ckpt, path)
    return str(path)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this would run",))


def _export_copy(env: Env, edit: Callable[[Path], None]) -> str:
    d = env.tmp / "export"
    shutil.copytree(env.export, d)
    edit(d)
    return str(d)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _other_architecture(d: Path) -> None:
    import yaml

    card = yaml.safe_load((d / "config.yaml").read_text())
    card["model"]["projector"] = {"type": "linear"}
    (d / "config.yaml").write_text(yaml.safe_dump(card))


def _finished_eval(env: Env) -> list[str]:
    out = env.tmp / "eval"
    out.mkdir()
    (out / "results.json").write_text("{}\n")
    return ["eval", TINY_EVAL, "--model", str(env.export), f"eval.out_dir={out}"]


def _resumed_out_with_bad_middle_line(env: Env) -> list[str]:
    argv = env.predict_rows([row(id="a"), row(id="b")])
    Path(argv[argv.index("--out") + 1]).write_text('{"id": "a", "answer": "x"}\nnot json\n{"id": "b"}\n')
    env.outputs.clear()   # the file is the user's: it must be left exactly as it was (checked below)
    env.outputs.append(("unchanged", Path(argv[argv.index("--out") + 1]),
                        '{"id": "a", "answer": "x"}\nnot json\n{"id": "b"}\n'))
    return argv


def _judged_dlc(env: Env, edit: Callable[[dict], None] | None = None, extra: tuple[str, ...] = (),
                predictions: dict | None = None) -> list[str]:
    """``score dlc`` on DAM's files (qa.json, class_names.json, a {key: description} predictions file) and a
    judge cache in DAM's layout written by a complete judged run, then edited by ``edit``; the cache must be left
    exactly as it was by the refused run."""
    from regionvlm.evaluation.benchmark import load_benchmark

    qa = {"7": [{"question": "What colour is it?", "choices": [["red", 1], ["blue", -1]], "type": "positive"}],
          "8": [{"question": "What colour is it?", "choices": [["red", 1], ["blue", -1]], "type": "negative"}]}
    files = [env.write("qa.json", json.dumps(qa)), env.write("class_names.json", json.dumps({"7": "cup", "8": "mug"}))]
    preds = env.write("mine.json", json.dumps(predictions or {"7": "A red cup.", "8": "A blue mug."}))
    cache = env.tmp / "mine_eval.json"

    def judge(prompts):
        return ["A"] * len(prompts)
    judge.name = "meta-llama/Meta-Llama-3.1-8B-Instruct"
    if predictions is None:
        load_benchmark("dlc", annotations=files, judge=judge, judge_cache=str(cache)).score_file(preds)
        data = json.loads(cache.read_text())
        if edit:
            edit(data)
        cache.write_text(json.dumps(data, indent=4))
        env.outputs.append(("unchanged", cache, cache.read_text()))
    return ["score", "dlc", "--predictions", preds, "--annotations", *files, "--judge-cache", str(cache), *extra]


def _osprey_ids(env: Env, ids: list) -> list[str]:
    poly = [[1, 1, 9, 1, 9, 9, 1, 9]]
    entry = {"file_name": IMAGE, "height": 128, "width": 128, "categories": ["cat"] * len(ids),
             "annotations": [{"segmentation": poly, **({"id": i} if i is not None else {})} for i in ids]}
    ann = env.write("lvis_val_1k_category.json", json.dumps([entry]))
    pred = env.write("p.jsonl", "".join(json.dumps({"id": i, "text": "cat"}) + "\n" for i in range(len(ids))))
    return ["score", "lvis_cls", "--predictions", pred, "--annotations", ann]


# (case id, argv builder, fragments the one error line must contain)
CASES: list[tuple[str, Callable[[Env], list[str]], list[str]]] = [
    # -- config --
    ("config-missing-file", lambda e: ["config", str(e.tmp / "nope.yaml")], ["nope.yaml", "no such config"]),
    ("config-yaml-syntax", lambda e: ["config", e.write("bad.yaml", "seed: 1\nmodel: [a,\n  b: c\n")],
     ["bad.yaml", "line", "invalid YAML"]),
    ("config-unknown-key", lambda e: ["config", TINY_STAGE1, "trainer.max_stepz=3"],
     ["stage1.yaml", "trainer.max_stepz", "max_steps"]),
    ("config-unknown-model-key", lambda e: ["config", TINY_STAGE1, "model.projektor.type=mlp"],
     ["stage1.yaml", "model.projektor", "projector"]),
    ("config-wrong-type-trainer", lambda e: ["config", TINY_STAGE1, "trainer.max_steps=ten"],
     ["stage1.yaml", "trainer.max_steps", "expected a number", "'ten'"]),
    ("config-wrong-type-data", lambda e: ["config", TINY_STAGE1, "data.batch_size=[1,2]"],
     ["stage1.yaml", "data.batch_size", "expected a number"]),
    ("config-wrong-type-bool", lambda e: ["config", TINY_STAGE1, "model.llm.gradient_checkpointing=often"],
     ["stage1.yaml", "model.llm.gradient_checkpointing", "expected true or false", "'often'"]),
    ("config-unknown-name", lambda e: ["config", TINY_STAGE1, "model.projector.type=mlp9"],
     ["stage1.yaml", "model.projector.type", "no projector named 'mlp9'"]),
    ("config-unknown-dataset", lambda e: ["config", TINY_STAGE1, "data.train.0.type=coco_instancez"],
     ["stage1.yaml", "data.train[0].type", "coco_instances"]),
    ("config-base-cycle", lambda e: (e.write("b.yaml", "_base_: a.yaml\n"),
                                     ["config", e.write("a.yaml", "_base_: b.yaml\nseed: 1\n")])[1],
     ["a.yaml", "b.yaml", "_base_ cycle"]),
    ("config-interpolation-missing", lambda e: ["config", TINY_STAGE1, "seed=${nope.x}"],
     ["stage1.yaml", "seed", "nope.x"]),
    ("config-env-unset", lambda e: ["config", TINY_STAGE1, "output.root=${oc.env:REGIONVLM_SURELY_UNSET}"],
     ["stage1.yaml", "output.root", "REGIONVLM_SURELY_UNSET"]),
    ("config-nonfinite-policy", lambda e: ["config", TINY_STAGE1, "trainer.on_nonfinite_loss=maybe"],
     ["stage1.yaml", "trainer.on_nonfinite_loss", "stop, skip"]),
    ("config-checkpoint-every", lambda e: ["config", TINY_STAGE1, "trainer.checkpoint_every_n_steps=0"],
     ["stage1.yaml", "trainer.checkpoint_every_n_steps", "positive number of steps"]),
    ("config-pretrained-missing", lambda e: ["train", TINY_STAGE1, f"model.llm.pretrained={e.tmp}/no_llm",
                                             f"output.root={e.output('runs')}"],
     ["stage1.yaml", "model.llm.pretrained", "no such folder", "no_llm"]),
    ("config-data-file-missing", lambda e: ["train", TINY_STAGE1, f"data.train.0.ann_file={e.tmp}/none.json",
                                            f"output.root={e.output('runs')}"],
     ["stage1.yaml", "data.train[0].ann_file", "none.json"]),
    ("config-trust-remote-code-off", lambda e: ["train", TINY_STAGE1, f"model.llm.pretrained={remote_code_model(e)}",
                                                "~model.llm.config", "model.llm.tokenizer=null",
                                                f"output.root={e.tmp}/runs"],
     ["model.llm", "remote", "trust_remote_code: true"]),
    # -- data: images --
    ("image-missing", lambda e: e.predict_rows([row(image="synth_999999.png")]),
     ["synth_999999.png", "image file not found"]),
    ("image-truncated", lambda e: e.predict_rows([row(image=e.write(
        "cut.png", (e.data / "images" / IMAGE).read_bytes()[:300]))]), ["cut.png", "cannot decode image"]),
    ("image-not-an-image", lambda e: e.predict_rows([row(image=e.write("notes.png", "just text"))]),
     ["notes.png", "cannot decode image"]),
    ("image-decompression-bomb", lambda e: e.predict_rows([row(image=e.write("bomb.png", bomb_png()))]),
     ["bomb.png", "10000000000 pixels", "decompression bomb"]),
    ("image-over-pixel-limit", lambda e: (setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100),   # restored by a fixture
                                          e.predict_rows([row()]))[1], [IMAGE, "128×128", "decompression bomb"]),
    ("image-path-escapes-root", lambda e: e.predict_rows([row(image="../../etc/passwd")]),
     ["questions.jsonl:1", "'../../etc/passwd'", "leads out of the image root"]),
    # -- data: regions and prompts --
    ("region-index-beyond-regions", lambda e: e.predict_rows([row(
        regions=[{"bbox": [1, 1, 5, 5]}, {"bbox": [3, 3, 9, 9]}], question="<image>\nIs <region3> red?")]),
     ["q1", "<region3>", "2 regions"]),
    ("box-outside-image", lambda e: e.predict_rows([row(regions=[{"bbox": [500, 500, 20, 20]}])]),
     ["questions.jsonl:1", "regions[0]", "outside the image"]),
    ("box-negative-size", lambda e: e.predict_rows([row(regions=[{"bbox": [5, 5, -3, 4]}])]),
     ["questions.jsonl:1", "regions[0]", "negative area"]),
    ("box-zero-size", lambda e: e.predict_rows([row(regions=[{"bbox": [5, 5, 0, 4]}])]),
     ["questions.jsonl:1", "regions[0]", "zero or negative area"]),
    ("polygon-two-points", lambda e: e.predict_rows([row(regions=[{"segmentation": [[1, 1, 5, 5]]}])]),
     ["questions.jsonl:1", "regions[0]", "2 points, needs at least 3"]),
    ("polygon-zero-area", lambda e: e.predict_rows([row(regions=[{"segmentation": [[1, 1, 5, 5, 9, 9]]}])]),
     ["questions.jsonl:1", "regions[0]", "zero area"]),
    ("rle-size-mismatch", lambda e: e.predict_rows([row(regions=[{"rle": {"size": [10, 10], "counts": [100]}}])]),
     ["questions.jsonl:1", "regions[0].size", "[10, 10]", "[128, 128]"]),
    ("rle-empty-mask", lambda e: e.predict_rows([row(regions=[{"rle": {"size": [128, 128], "counts": [16384]}}])]),
     ["questions.jsonl:1", "regions[0]", "empty"]),
    ("conversation-too-long", lambda e: e.predict_rows([row(question="<image>\n<region1> " + "word " * 400)]),
     ["max_length=200"]),
    ("input-row-missing-field", lambda e: e.predict_rows([{"id": "q1", "conversations": []}]),
     ["questions.jsonl:1", "'image'"]),
    ("input-duplicate-id", lambda e: e.predict_rows([row(), row()]), ["questions.jsonl", "duplicate id 'q1'"]),
    ("input-no-question", lambda e: e.predict_rows([{**row(), "conversations": [{"from": "gpt", "value": "x"}]}]),
     ["questions.jsonl:1", "no human turn"]),
    ("input-invalid-json", lambda e: ["predict", "--model", str(e.export), "--input", e.write("q.jsonl", "{\"id\": 1\n"),
                                      "--out", e.output("a.jsonl")], ["q.jsonl", "line 1", "invalid JSON"]),
    ("resume-malformed-middle-line", _resumed_out_with_bad_middle_line, ["answers.jsonl", "line 2", "not valid JSON"]),
    # -- annotations given to score --
    ("annotation-missing-field", lambda e: e.score(val_predictions(e), e.write("ann.json", json.dumps(
        {"images": [{"id": 1, "file_name": "x.png", "width": 9, "height": 9}], "categories": [{"id": 1, "name": "a"}],
         "annotations": [{"id": 1, "image_id": 1, "category_id": 1}]}))),
     ["ann.json", "annotations[0]", "neither 'segmentation' nor 'bbox'"]),
    ("annotation-unknown-image", lambda e: e.score(val_predictions(e), e.write("ann.json", json.dumps(
        {"images": [], "categories": [{"id": 1, "name": "a"}],
         "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 2, 2]}]}))),
     ["ann.json", "annotations[0].image_id", "unknown image id 7"]),
    ("annotation-invalid-json", lambda e: e.score(val_predictions(e), e.write("ann.json", '{"images": [\n')),
     ["ann.json", "line 2", "invalid JSON"]),
    # -- predictions given to score --
    ("predictions-truncated-line", lambda e: e.score(val_predictions(e, lambda r: r[:-1] + ['{"id": 1, "te'])),
     ["predictions.jsonl", "line 48", "invalid JSON"]),
    ("predictions-duplicate-id", lambda e: e.score(val_predictions(e, lambda r: r + r[:1])),
     ["predictions.jsonl", "line 49", "duplicate id", "first at line 1"]),
    ("predictions-unknown-id", lambda e: e.score(val_predictions(e, lambda r: r + [{"id": 999999, "text": "x"}])),
     ["predictions.jsonl", "line 49", "unknown id '999999'"]),
    ("predictions-missing-field", lambda e: e.score(val_predictions(e, lambda r: [{"id": r[0]["id"]}] + r[1:])),
     ["predictions.jsonl", "line 1", "missing field 'text'"]),
    ("predictions-wrong-type", lambda e: e.score(val_predictions(e, lambda r: [{**r[0], "text": 5}] + r[1:])),
     ["predictions.jsonl", "line 1", "'text' must be a string"]),
    ("predictions-incomplete", lambda e: e.score(val_predictions(e, lambda r: r[1:])),
     ["predictions.jsonl", "missing predictions for 1 of 48", "--allow-partial"]),
    ("predictions-file-missing", lambda e: e.score(str(e.tmp / "none.jsonl")), ["none.jsonl", "file not found"]),
    # -- judged scoring: judge caches, DAM's files (issue 22) --
    ("judge-cache-other-model", lambda e: _judged_dlc(e, extra=("-o", "judge={type: openai_judge, model: gpt-4o}")),
     ["mine_eval.json", "judge_model", "Meta-Llama-3.1-8B-Instruct", "gpt-4o"]),
    ("judge-cache-other-prompt", lambda e: _judged_dlc(e, lambda d: d["7"]["prompt"].__setitem__(
        1, d["7"]["prompt"][1].replace("closest", "best"))), ["mine_eval.json", "7.prompt[1]", "another judge prompt"]),
    ("judge-cache-other-predictions", lambda e: _judged_dlc(e, lambda d: d["8"].__setitem__("pred", "A red mug.")),
     ["mine_eval.json", "8.pred", "another prediction"]),
    ("judge-cache-incomplete-no-judge", lambda e: _judged_dlc(e, lambda d: d.pop("8")),
     ["mine_eval.json", "answers 2 of 4 judge prompts", "the other 2 need a judge"]),
    ("judge-cache-invalid-json", lambda e: (e.write("mine_eval.json", '{"7": {\n'),
                                            _judged_dlc(e, predictions={"7": "x", "8": "y"}))[1],
     ["mine_eval.json", "line 2", "invalid JSON"]),
    ("judge-cache-not-a-cache", lambda e: ["score", "spatial", "--predictions", e.write("p.jsonl", ""), "--annotations",
                                           str(e.data / "spatial" / "SpatialRGPT-Bench_v1.json"), "--allow-partial",
                                           "--judge-cache", e.write("c.json", '{"7": {}}')],
     ["c.json", "not a regionvlm judge cache"]),
    ("judge-cache-unjudged-benchmark", lambda e: [*e.score(val_predictions(e)), "--judge-cache", str(e.tmp / "c.json")],
     ["--judge-cache", "coco_cls asks no judge"]),
    ("judge-cache-is-the-predictions", lambda e: (lambda argv: [*argv[:-1], argv[3]])(
        _judged_dlc(e, predictions={"7": "a cup", "8": "a mug"})), ["--judge-cache", "mine.json", "predictions file"]),
    ("dlc-predictions-unknown-key", lambda e: _judged_dlc(e, predictions={"7": "a cup", "8": "a mug", "99": "x"}),
     ["mine.json", "99", "not a region of", "qa.json"]),
    ("dlc-predictions-error-message", lambda e: _judged_dlc(e, predictions={"7": "a cup", "8": "Error: timeout"}),
     ["mine.json", "8", "the description is an error message"]),
    ("osprey-ids-for-some-regions", lambda e: _osprey_ids(e, [501, None]),
     ["lvis_val_1k_category.json", "region 1", "no integer annotation 'id'"]),
    ("osprey-ids-duplicate", lambda e: _osprey_ids(e, [501, 501]),
     ["lvis_val_1k_category.json", "region 1", "annotation id 501 also at region 0"]),
    # -- checkpoints and exports --
    ("export-truncated-weights", lambda e: ["predict", "--model", _export_copy(
        e, lambda d: _truncate(d / "model.safetensors")), "--image", str(e.data / "images" / IMAGE),
        "--region", "box:1,1,9,9", "--prompt", "<region1>?", "--viz", e.output("pic.png")],
     ["model.safetensors", "truncated or not a safetensors file"]),
    ("export-other-architecture", lambda e: ["predict", "--model", _export_copy(e, _other_architecture),
                                             "--image", str(e.data / "images" / IMAGE), "--region", "box:1,1,9,9",
                                             "--prompt", "<region1>?", "--viz", e.output("pic.png")],
     ["model.safetensors", "projector"]),
    ("export-missing", lambda e: ["predict", "--model", str(e.tmp / "nothing"), "--image", str(e.data / "images" / IMAGE),
                                  "--region", "box:1,1,9,9", "--prompt", "<region1>?"], ["nothing", "not a regionvlm export"]),
    ("checkpoint-runs-code", lambda e: (torch.save({"state_dict": {}, "x": RunsCode()}, e.tmp / "evil.ckpt"),
                                        ["export", str(e.tmp / "evil.ckpt"), "--out", e.output("exp")])[1],
     ["evil.ckpt", "refused", "weights_only", "posix.system"]),
    ("checkpoint-truncated", lambda e: ["export", e.write("cut.ckpt", Path(checkpoint(e, lambda c: None)).read_bytes()[:4000]),
                                        "--out", e.output("exp")], ["cut.ckpt", "truncated or not a PyTorch checkpoint"]),
    ("checkpoint-other-architecture", lambda e: ["export", checkpoint(e, lambda c: c["state_dict"].update(
        {"model.projector.extra.weight": torch.zeros(2)})), "--out", e.output("exp")],
     ["run.ckpt", "unexpected", "model.projector.extra.weight".removeprefix("model.")]),
    ("checkpoint-missing-weights", lambda e: ["export", checkpoint(e, lambda c: c["state_dict"].pop(
        next(k for k in c["state_dict"] if "projector" in k))), "--out", e.output("exp")], ["run.ckpt", "missing", "projector"]),
    # issue 23 item 1: a checkpoint that passes weights_only=True may still name paths and turn on remote code
    ("checkpoint-tokenizer-file-escapes", lambda e: ["export", escaping_checkpoint(e, "../../escaped.txt"),
                                                     "--out", e.output("exp")],
     ["run.ckpt", "tokenizer_files", "refused file name '../../escaped.txt'"]),
    ("checkpoint-tokenizer-file-absolute", lambda e: ["export", escaping_checkpoint(e, str(e.tmp / "abs.txt")),
                                                      "--out", e.output("exp")],
     ["run.ckpt", "tokenizer_files", "refused file name", "abs.txt"]),
    ("checkpoint-turns-on-remote-code", lambda e: ["export", checkpoint(e, lambda c: c["hyper_parameters"]["config"][
        "model"]["llm"].update(trust_remote_code=True)), "--out", e.output("exp")],
     ["run.ckpt", "model.llm.trust_remote_code", "refused"]),
    ("checkpoint-not-regionvlm", lambda e: (torch.save({"state_dict": {}}, e.tmp / "other.ckpt"),
                                            ["export", str(e.tmp / "other.ckpt"), "--out", e.output("exp")])[1],
     ["other.ckpt", "not a regionvlm training checkpoint"]),
    # -- command line --
    ("cli-region-malformed", lambda e: ["predict", "--model", str(e.export), "--image", str(e.data / "images" / IMAGE),
                                        "--region", "box:1,2,3", "--prompt", "<region1>?"], ["--region[0]", "box:1,2,3"]),
    ("cli-region-unknown-kind", lambda e: ["predict", "--model", str(e.export), "--image", str(e.data / "images" / IMAGE),
                                           "--region", "circle:5", "--prompt", "<region1>?"], ["--region[0]", "circle:5"]),
    ("cli-region-mask-missing", lambda e: ["predict", "--model", str(e.export), "--image", str(e.data / "images" / IMAGE),
                                           "--region", f"mask:{e.tmp}/m.png", "--prompt", "<region1>?"],
     ["--region[0]", "m.png"]),
    # issue 23 item 5: ~100 bytes whose pixel count passes, whose padded square would take ~10 GB
    ("image-pads-over-limit", lambda e: ["predict", "--model", _export_copy(e, card_edit(
        lambda c: c["processor"].update(resize_mode="pad"))), "--image", e.write("line.png", line_png(100_000, 1)),
        "--region", "box:1,0,9,1", "--prompt", "<region1>?"],
     ["line.png", "100000×1", "pads to a 100000×100000 square", "over the limit"]),
    ("cli-image-missing", lambda e: ["predict", "--model", str(e.export), "--image", str(e.tmp / "x.jpg"),
                                     "--region", "box:1,1,9,9", "--prompt", "<region1>?"], ["--image", "x.jpg"]),
    ("cli-export-out-not-empty", lambda e: (e.write("exp/keep.txt", "mine"),
                                            ["export", e.write("any.ckpt", b""), "--out", str(e.tmp / "exp")])[1],
     ["exp", "not empty", "--overwrite"]),
    ("cli-eval-out-holds-results", _finished_eval, ["eval", "results of an earlier evaluation", "--overwrite"]),
    ("cli-eval-annotations-missing", lambda e: ["eval", TINY_EVAL, "--model", str(e.export),
                                                f"eval.out_dir={e.tmp}/ev", f"eval.benchmarks.pope.annotations={e.tmp}/no.json"],
     ["eval.yaml", "eval.benchmarks.pope.annotations: no such file", "no.json"]),
    # a run folder holding a checkpoint (one that saved none is rerun: test_e2e_cli's failed-before-checkpoint test)
    ("cli-train-run-dir-exists", lambda e: ((e.tmp / "runs" / "r" / "checkpoints").mkdir(parents=True),
                                            (e.tmp / "runs" / "r" / "checkpoints" / "last.ckpt").write_bytes(b"x"),
                                            ["train", TINY_STAGE1, f"output.root={e.tmp}/runs", "output.name=r"])[2],
     ["runs/r", "run directory exists", "--resume last", "--overwrite"]),
    ("cli-resume-missing", lambda e: ["train", TINY_STAGE1, f"output.root={e.tmp}/runs", "--resume", "last"],
     ["--resume", "last.ckpt"]),
]


# -- issue 23 (items 2, 3, 4, 12, 14, 15) and issue 24 item 7: untrusted files, configs, predict's files, datagen,
#    ablate. Helpers first, then the cases, appended to the catalogue.
TINY_DATAGEN = "projects/rgpt/tiny/datagen.yaml"
TINY_STAGE2 = "projects/rgpt/tiny/stage2.yaml"
DATAGEN_TEMPLATE = ["~datagen.captioner.export", "~datagen.captioner.max_new_tokens", "datagen.captioner.type=template",
                    "--dry-run", "1"]


class WritesMarker:
    """Unpickled by plain `pickle`, this runs ``touch MARKER``: what a crafted refs file does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted_refs(env: Env, payload: Callable[[Path], object] | None = None) -> str:
    """A ``refs(umd).p`` whose loading would run code (``os.system`` writing a marker file); the marker must not
    exist after the command."""
    import pickle

    marker = env.tmp / "PWNED"
    env.outputs.append(marker)
    obj = payload(marker) if payload else [{"ref_id": 1, "sentences": [{"sent": WritesMarker(marker)}]}]
    return env.write("evil/refs(umd).p", pickle.dumps(obj, protocol=2))


def score_refs(env: Env, refs: str) -> list[str]:
    preds = env.write("p.jsonl", '{"id": 1, "text": "Region [1]"}\n')
    return ["score", "refcocog_rec", "--predictions", preds, "--annotations", refs,
            str(env.data / "refcocog" / "instances.json")]


def _ordered_dict_payload(marker: Path) -> object:
    from collections import OrderedDict

    return [OrderedDict(ref_id=1)]


def config_file(env: Env, name: str, text: str | bytes) -> list[str]:
    return ["config", env.write(name, text)]


def alias_bomb() -> str:
    """A billion laughs in YAML: nine levels of nine aliases (9**9 values) in about 500 bytes."""
    lines = ['seed: 0', 'model:', '  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"  {name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def predict_out(env: Env, content: str | None, name: str = "answers.jsonl", rows: list[dict] | None = None) -> list[str]:
    """``predict --input`` (two valid rows, ids a and b) into an ``--out`` holding ``content``, which must be left
    exactly as it was."""
    argv = env.predict_rows(rows or [row(id="a"), row(id="b")])
    out = Path(argv[argv.index("--out") + 1])
    env.outputs.clear()
    if content is not None:
        out.write_text(content)
        env.outputs.append(("unchanged", out, content))
    return argv


def predict_out_at(env: Env, make: Callable[[Path], Path]) -> list[str]:
    """``predict --input`` with ``--out`` at the path ``make(tmp)`` returns (a folder, a link, a FIFO ...)."""
    argv = env.predict_rows([row(id="a")])
    argv[argv.index("--out") + 1] = str(make(env.tmp))
    env.outputs.clear()
    return argv


def _dangling(env: Env) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        (tmp / "link.jsonl").symlink_to(tmp / "nowhere" / "target.jsonl")
        env.outputs.append(tmp / "nowhere")
        return tmp / "link.jsonl"
    return make


def _fifo(tmp: Path, name: str = "pipe") -> Path:
    os.mkfifo(tmp / name)
    return tmp / name


def _hard_link_to_input(tmp: Path) -> Path:
    os.link(tmp / "questions.jsonl", tmp / "same.jsonl")
    return tmp / "same.jsonl"


def _out_is_input(env: Env) -> list[str]:
    argv = predict_out(env, None)
    argv[argv.index("--out") + 1] = argv[argv.index("--input") + 1]
    env.outputs.append(("unchanged", Path(argv[argv.index("--input") + 1]),
                        Path(argv[argv.index("--input") + 1]).read_text()))
    return argv


def _viz_is_the_image(env: Env) -> list[str]:
    image = shutil.copy(env.data / "images" / IMAGE, env.tmp / "mine.png")
    argv = predict_one(env, "--viz", str(image))
    argv[argv.index("--image") + 1] = str(image)
    return argv


def _blank_lines_then_bad_row(env: Env) -> list[str]:
    argv = env.predict_rows([row()])
    Path(argv[argv.index("--input") + 1]).write_text(
        "\n\n" + json.dumps(row(id="a")) + "\n" + json.dumps({**row(id="b"), "image": None}) + "\n")
    return argv


def predict_input_at(env: Env, make: Callable[[Path], Path]) -> list[str]:
    return ["predict", "--model", str(env.export), "--input", str(make(env.tmp)), "--out", env.output("a.jsonl")]


def predict_one(env: Env, *extra: str, region: str = "box:1,1,9,9") -> list[str]:
    """One question about the synthetic image; ``extra`` flags appended."""
    return ["predict", "--model", str(env.export), "--image", str(env.data / "images" / IMAGE), "--region", region,
            "--prompt", "<region1>?", "--device", "cpu", *extra]


def _sparse(tmp: Path, size: int) -> Path:
    path = tmp / "huge_mask.png"
    with open(path, "wb") as f:
        f.truncate(size)   # sparse: no disk used
    return path


def card_edit(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        import yaml

        card = yaml.safe_load((d / "config.yaml").read_text())
        edit(card)
        (d / "config.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return apply


def ablate_spec(env: Env, **changes) -> list[str]:
    """``ablate SPEC --cell 0`` of a one-variant spec on the tiny recipes, with ``changes``; no cell may start."""
    import yaml

    spec = {"train": str(Path(TINY_STAGE2).resolve()), "eval": str(Path(TINY_EVAL).resolve()), "seeds": [0],
            "variants": {"a": []}, "output": str(env.tmp / "sweep")}
    spec.update(changes)
    env.outputs.append(env.tmp / "sweep")
    return ["ablate", env.write("spec.yaml", yaml.safe_dump(spec, sort_keys=False)), "--cell", "0"]


HARDEN_CASES: list[tuple[str, Callable[[Env], list[str]], list[str]]] = [
    # -- untrusted files: a refs pickle is data, never code --
    ("refs-pickle-runs-code", lambda e: score_refs(e, crafted_refs(e)),
     ["refs(umd).p", "refused", "posix.system"]),
    ("refs-pickle-names-a-class", lambda e: score_refs(e, crafted_refs(e, _ordered_dict_payload)),
     ["refs(umd).p", "refused", "collections.OrderedDict"]),
    ("refs-pickle-eval", lambda e: score_refs(e, e.write("r.p", b"cbuiltins\neval\n(S'1+1'\ntR.")),
     ["r.p", "refused", "builtins.eval"]),
    ("refs-pickle-other-codec", lambda e: score_refs(e, e.write("r.p", b"c_codecs\nencode\n(S'x'\nS'rot13'\ntR.")),
     ["r.p", "not a refs pickle", "rot13"]),
    ("refs-pickle-not-a-pickle", lambda e: score_refs(e, e.write("r.p", "just text\n")), ["r.p", "not a refs pickle"]),
    ("refs-pickle-a-folder", lambda e: score_refs(e, str((e.tmp / "refs.p").mkdir() or e.tmp / "refs.p")),
     ["refs.p", "is a folder"]),
    # -- configs: YAML read strictly --
    ("config-alias-bomb", lambda e: config_file(e, "bomb.yaml", alias_bomb()), ["bomb.yaml", "alias bomb"]),
    ("config-recursive-alias", lambda e: config_file(e, "rec.yaml", "model: &a {x: *a}\n"),
     ["rec.yaml", "line 1", "refers to the node that contains it"]),
    ("config-nested-too-deep", lambda e: config_file(e, "deep.yaml", "model:\n  x: " + "[" * 100 + "]" * 100 + "\n"),
     ["deep.yaml", "line 2", "nested deeper than 32"]),
    ("config-duplicate-key", lambda e: config_file(e, "dup.yaml", "seed: 1\nmodel: {}\nseed: 2\n"),
     ["dup.yaml", "line 3", "duplicate key 'seed'", "first at line 1"]),
    ("config-duplicate-nested-key", lambda e: config_file(e, "dup.yaml", f"_base_: {Path(TINY_STAGE1).resolve()}\n"
                                                           "trainer:\n  max_steps: 3\n  max_steps: 30\n"),
     ["dup.yaml", "line 4", "duplicate key 'max_steps'"]),
    ("config-not-utf8", lambda e: config_file(e, "bin.yaml", b"\xff\xfe\x00seed: 1\n"), ["bin.yaml", "not UTF-8"]),
    # -- configs: values --
    ("config-seed-negative", lambda e: ["config", TINY_STAGE1, "seed=-5"], ["seed", "0..4294967295", "-5"]),
    ("config-seed-huge-float", lambda e: ["config", TINY_STAGE1, "seed=1e30"], ["seed", "0..4294967295", "1e+30"]),
    ("config-seed-over-range", lambda e: ["config", TINY_STAGE1, "seed=4294967296"], ["seed", "4294967296"]),
    ("config-seed-in-file", lambda e: config_file(e, "s.yaml", f"_base_: {Path(TINY_STAGE1).resolve()}\nseed: -1\n"),
     ["s.yaml", "seed", "0..4294967295"]),
    ("config-output-root-is-file", lambda e: ["config", TINY_STAGE1, f"output.root={e.write('f.txt', 'x')}"],
     ["output.root", "f.txt", "is a file, not a folder"]),
    ("config-output-root-below-file", lambda e: ["config", TINY_STAGE1, f"output.root={e.write('f.txt', 'x')}/runs"],
     ["output.root", "lies below the file", "f.txt"]),
    ("config-run-dir-is-file", lambda e: ["config", TINY_STAGE1, f"output.root={e.tmp}",
                                          f"output.name={Path(e.write('taken', 'x')).name}"],
     ["output.name", "taken", "is a file"]),
    ("train-output-root-is-file", lambda e: ["train", TINY_STAGE1, f"output.root={e.write('f.txt', 'x')}"],
     ["output.root", "f.txt", "is a file"]),
    ("config-secret-env", lambda e: ["config", TINY_STAGE1, "model.llm.token=${oc.env:HF_TOKEN}"],
     ["model.llm.token", "HF_TOKEN", "looks like a secret", "written to disk"]),
    ("config-delete-unknown-key", lambda e: config_file(e, "d.yaml", f"_base_: {Path(TINY_EVAL).resolve()}\n"
                                                        "eval:\n  benchmarks:\n    ~coco_clz:\n"),
     ["d.yaml", "eval.benchmarks.~coco_clz", "no such key to delete"]),
    ("config-delete-with-value", lambda e: config_file(e, "d.yaml", f"_base_: {Path(TINY_EVAL).resolve()}\n"
                                                       "eval:\n  benchmarks:\n    ~coco_cls: {limit: 3}\n"),
     ["d.yaml", "eval.benchmarks.~coco_cls", "a deletion takes no value"]),
    # -- predict: the answers file is resumed only when it is ours; never truncated otherwise --
    ("predict-out-one-json-document", lambda e: predict_out(e, '{"a": 1, "b": [1, 2]}'),
     ["answers.jsonl", "line 1", "not an answer row"]),
    ("predict-out-json-list", lambda e: predict_out(e, '[{"id": "a", "answer": "x"}]'),
     ["answers.jsonl", "line 1", "not an answer row"]),
    ("predict-out-foreign-ids", lambda e: predict_out(e, '{"id": "zz", "answer": "x"}\n'),
     ["answers.jsonl", "line 1", "id 'zz' is not a row of", "questions.jsonl"]),
    ("predict-out-rows-without-answer", lambda e: predict_out(e, json.dumps(row(id="a")) + "\n"),
     ["answers.jsonl", "line 1", "no 'answer' string"]),
    ("predict-out-answered-twice", lambda e: predict_out(e, '{"id": "a", "answer": "x"}\n' * 2),
     ["answers.jsonl", "line 2", "answered twice"]),
    ("predict-out-torn-foreign-line", lambda e: predict_out(e, 'my notes, not finished'),
     ["answers.jsonl", "line 1", "incomplete line", "no answer row of ours"]),
    ("predict-out-is-input", _out_is_input, ["--out", "same file as --input"]),
    ("predict-out-hard-link-to-input", lambda e: predict_out_at(e, _hard_link_to_input),
     ["--out", "same.jsonl", "same file as --input"]),
    ("predict-out-is-folder", lambda e: predict_out_at(e, lambda t: (t / "d").mkdir() or t / "d"),
     ["--out", "is a folder"]),
    ("predict-out-dangling-link", lambda e: predict_out_at(e, _dangling(e)),
     ["--out", "link.jsonl", "target.jsonl", "does not exist"]),
    ("predict-out-parent-is-file", lambda e: predict_out_at(e, lambda t: Path(e.write("f.txt", "x")) / "a.jsonl"),
     ["--out", "f.txt", "is not a folder"]),
    ("predict-out-fifo", lambda e: predict_out_at(e, _fifo), ["--out", "pipe", "not a regular file"]),
    ("predict-out-without-input", lambda e: predict_one(e, "--out", e.output("a.jsonl")), ["--out", "only with --input"]),
    ("predict-viz-with-input", lambda e: e.predict_rows([row()]) + ["--viz", e.output("v.png")],
     ["--viz", "only for one question"]),
    ("predict-viz-is-folder", lambda e: predict_one(e, "--viz", str((e.tmp / "d").mkdir() or e.tmp / "d")),
     ["--viz", "is a folder"]),
    ("predict-viz-is-the-image", _viz_is_the_image, ["--viz", "mine.png", "same file as --image"]),
    ("predict-input-is-folder", lambda e: predict_input_at(e, lambda t: (t / "q").mkdir() or t / "q"),
     ["--input", "is a folder"]),
    ("predict-input-fifo", lambda e: predict_input_at(e, _fifo), ["--input", "pipe", "not a regular file"]),
    # -- predict: rows of the wrong types, one line naming file:line and the field --
    ("predict-row-id-a-list", lambda e: e.predict_rows([{**row(), "id": [1]}]), ["questions.jsonl:1", "'id'", "[1]"]),
    ("predict-row-id-a-bool", lambda e: e.predict_rows([{**row(), "id": True}]), ["questions.jsonl:1", "'id'"]),
    ("predict-row-image-a-number", lambda e: e.predict_rows([{**row(), "image": 5}]),
     ["questions.jsonl:1", "'image' must be a path string"]),
    ("predict-row-conversations-a-string", lambda e: e.predict_rows([{**row(), "conversations": "hi"}]),
     ["questions.jsonl:1", "'conversations' must be a list"]),
    ("predict-row-turn-a-string", lambda e: e.predict_rows([{**row(), "conversations": ["hi"]}]),
     ["questions.jsonl:1", "conversations[0]"]),
    ("predict-row-value-a-number", lambda e: e.predict_rows([{**row(), "conversations": [{"from": "human",
                                                                                            "value": 5}]}]),
     ["questions.jsonl:1", "conversations[0].value must be a string"]),
    ("predict-row-regions-an-object", lambda e: e.predict_rows([{**row(), "regions": {"bbox": [1, 1, 5, 5]}}]),
     ["questions.jsonl:1", "'regions' must be a list"]),
    ("predict-row-line-number-after-blank-lines", _blank_lines_then_bad_row, ["questions.jsonl:4", "'image'"]),
    # -- predict: region files are read only when regular and bounded --
    ("predict-mask-fifo", lambda e: predict_one(e, region=f"mask:{_fifo(e.tmp)}"),
     ["--region[0]", "pipe", "is not a regular file"]),
    ("predict-rle-dev-zero", lambda e: predict_one(e, region="rle:/dev/zero"), ["--region[0]", "/dev/zero", "is not a regular file"]),
    ("predict-mask-a-folder", lambda e: predict_one(e, region=f"mask:{e.tmp}"), ["--region[0]", "is not a regular file"]),
    ("predict-mask-over-size-cap", lambda e: predict_one(e, region=f"mask:{_sparse(e.tmp, 65 * 2**20)}"),
     ["--region[0]", "huge_mask.png", "over the limit of 67108864"]),
    # -- predict: flags and an export's card within limits, before the model loads --
    ("predict-card-image-size", lambda e: ["predict", "--model", _export_copy(e, card_edit(
        lambda c: c["processor"].update(image_size=40000))), "--image", str(e.data / "images" / IMAGE),
        "--region", "box:1,1,9,9", "--prompt", "<region1>?"],
     ["config.yaml", "processor.image_size", "40000", "1..4096"]),
    ("predict-card-encoder-image-size", lambda e: ["predict", "--model", _export_copy(e, card_edit(
        lambda c: c["model"]["vision_encoder"]["config"].update(image_size=40000))), "--image",
        str(e.data / "images" / IMAGE), "--region", "box:1,1,9,9", "--prompt", "<region1>?"],
     ["config.yaml", "model.vision_encoder.config.image_size", "40000"]),
    ("predict-card-max-length", lambda e: ["predict", "--model", _export_copy(e, card_edit(
        lambda c: c["processor"].update(max_length=10**12))), "--image", str(e.data / "images" / IMAGE),
        "--region", "box:1,1,9,9", "--prompt", "<region1>?"], ["config.yaml", "processor.max_length"]),
    ("predict-card-max-new-tokens", lambda e: ["predict", "--model", _export_copy(e, card_edit(
        lambda c: c["generation"].update(max_new_tokens=10**9))), "--image", str(e.data / "images" / IMAGE),
        "--region", "box:1,1,9,9", "--prompt", "<region1>?"], ["config.yaml", "generation.max_new_tokens"]),
    ("predict-card-num-beams", lambda e: ["predict", "--model", _export_copy(e, card_edit(
        lambda c: c["generation"].update(num_beams=100000))), "--image", str(e.data / "images" / IMAGE),
        "--region", "box:1,1,9,9", "--prompt", "<region1>?"], ["config.yaml", "generation.num_beams", "1..64"]),
    ("predict-flag-max-new-tokens", lambda e: predict_one(e, "--max-new-tokens", "0"), ["--max-new-tokens 0"]),
    ("predict-flag-num-beams", lambda e: predict_one(e, "--num-beams", "1000000"), ["--num-beams 1000000", "1..64"]),
    ("predict-flag-temperature", lambda e: predict_one(e, "--temperature", "nan"), ["--temperature nan"]),
    ("predict-flag-top-p", lambda e: predict_one(e, "--top-p", "2"), ["--top-p 2.0", "(0, 1]"]),
    ("predict-flag-batch-size", lambda e: e.predict_rows([row()]) + ["--batch-size", "0"], ["--batch-size 0"]),
    # -- datagen --
    ("datagen-template-unknown-field", lambda e: ["datagen", TINY_DATAGEN, *DATAGEN_TEMPLATE,
                                                  'datagen.prompts.region="{nope} <region1>"'],
     ["datagen.prompts.region", "{nope}", "unknown field", "{global_caption}, {class_name}"]),
    ("datagen-template-attribute", lambda e: ["datagen", TINY_DATAGEN, *DATAGEN_TEMPLATE,
                                              'datagen.prompts.region="{class_name.__class__}"'],
     ["datagen.prompts.region", "attribute and index access"]),
    ("datagen-template-positional", lambda e: ["datagen", TINY_DATAGEN, *DATAGEN_TEMPLATE,
                                               'datagen.prompts.global="{0}"'],
     ["datagen.prompts.global", "{0}", "positional"]),
    ("datagen-template-not-text", lambda e: ["datagen", TINY_DATAGEN, *DATAGEN_TEMPLATE, "datagen.prompts.region={x}"],
     ["datagen.prompts.region", "expected a text template"]),
    ("datagen-captioner-template-field", lambda e: ["datagen", TINY_DATAGEN, *DATAGEN_TEMPLATE,
                                                    'datagen.captioner.region_template="a {clour} thing"'],
     ["datagen.captioner.region_template", "{clour}", "did you mean 'colour'"]),
    ("datagen-seed-negative", lambda e: ["datagen", TINY_DATAGEN, *DATAGEN_TEMPLATE, "seed=-5"],
     ["seed", "0..4294967295"]),
    ("datagen-max-per-image-negative", lambda e: ["datagen", TINY_DATAGEN, *DATAGEN_TEMPLATE,
                                                  "datagen.selection.max_per_image=-1"],
     ["datagen.selection.max_per_image", "-1"]),
    ("datagen-num-workers-negative", lambda e: ["datagen", TINY_DATAGEN, *DATAGEN_TEMPLATE, "datagen.num_workers=-1"],
     ["datagen.num_workers", "-1"]),
    ("datagen-output-file-escapes", lambda e: ["datagen", TINY_DATAGEN, *DATAGEN_TEMPLATE,
                                               "datagen.output.file=../../captions.jsonl"],
     ["datagen.output.file", "no folders", "../../captions.jsonl"]),
    # -- ablate --
    ("ablate-million-cells", lambda e: ablate_spec(e, seeds=list(range(1000)),
                                                   variants={f"v{i}": [] for i in range(1000)}),
     ["spec.yaml", "1000 variants × 1000 seeds = 1000000 cells", "more than 10000"]),
    ("ablate-negative-seed", lambda e: ablate_spec(e, seeds=[0, -5]), ["spec.yaml seeds", "-5", "0..4294967295"]),
    ("ablate-variant-sets-output-root", lambda e: ablate_spec(e, variants={"a": ["output.root=/tmp/elsewhere"]}),
     ["spec.yaml variants.a", "output.root", "set for each cell by ablate"]),
    ("ablate-variant-sets-eval-out-dir", lambda e: ablate_spec(e, variants={"a": {"eval_overrides": [
        f"eval.out_dir={e.tmp}/elsewhere"]}}), ["variants.a.eval_overrides", "eval.out_dir"]),
    ("ablate-spec-sets-seed", lambda e: ablate_spec(e, overrides=["seed=3"]), ["spec.yaml overrides", "seeds:"]),
    ("ablate-variant-logger-outside", lambda e: ablate_spec(e, variants={"a": [
        f"loggers=[{{type: csv, save_dir: {e.tmp}/elsewhere}}]"]}),
     ["variants.a", "loggers[0].save_dir", "outside the cell's folder"]),
    ("ablate-variant-key-typo", lambda e: ablate_spec(e, variants={"a": ["trainer.max_stepz=3"]}),
     ["spec.yaml variants.a", "trainer.max_stepz", "max_steps"]),
    ("ablate-spec-duplicate-key", lambda e: ["ablate", e.write("spec.yaml", "train: a.yaml\ntrain: b.yaml\n"), "--list"],
     ["spec.yaml", "line 2", "duplicate key 'train'"]),
    ("ablate-spec-alias-bomb", lambda e: ["ablate", e.write("spec.yaml", alias_bomb().replace("seed: 0\nmodel:",
                                                                                                 "metrics:")), "--list"],
     ["spec.yaml", "alias bomb"]),
    # -- serve (issue 23 item 8: never an open server without saying so) --
    ("serve-empty-api-key", lambda e: ["serve", "--model", str(e.export), "--api-key", ""],
     ["--api-key: is empty", "leave it unset"]),
    ("serve-open-host-without-key", lambda e: ["serve", "--model", str(e.export), "--host", "0.0.0.0"],
     ["--host 0.0.0.0", "without an API key", "--allow-open"]),
    ("serve-max-regions-zero", lambda e: ["serve", "--model", str(e.export), "--max-regions", "0"],
     ["--max-regions", "at least 1"]),
    ("serve-max-body-zero", lambda e: ["serve", "--model", str(e.export), "--max-body-mb", "0"],
     ["--max-body-mb", "at least 1"]),
    ("serve-max-mask-pixels-zero", lambda e: ["serve", "--model", str(e.export), "--max-mask-pixels", "0"],
     ["--max-mask-pixels", "at least 1"]),
]
CASES += HARDEN_CASES


@pytest.fixture(scope="module")
def env_base(tiny_workspace, tiny_export):
    return tiny_workspace / "data" / "synth", tiny_export[3]


def test_the_catalogue_has_at_least_forty_cases():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "build", "fragments"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(name, build, fragments, env_base, tmp_path, capsys,
                                                          monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # a case may lower it
    data, export = env_base
    env = Env(tmp=tmp_path, data=data, export=export)
    argv = build(env)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    for out in env.outputs:
        if isinstance(out, tuple):   # ("unchanged", path, text)
            assert out[1].read_text() == out[2]
        else:
            assert not out.exists(), f"{out} left behind"
    leftovers = [p for p in tmp_path.rglob("*.tmp")]
    assert not leftovers, leftovers


# -- images that must work --------------------------------------------------------------------------------------
def _unusual_images(src: Path, folder: Path) -> dict[str, tuple[str, np.ndarray]]:
    """name → (file, the RGB pixels a viewer shows); each made from the same synthetic image."""
    rgb = np.asarray(Image.open(src).convert("RGB"))
    gray = np.asarray(Image.open(src).convert("L"))
    files = {}
    Image.fromarray(gray).save(folder / "gray.png")
    files["grayscale"] = ("gray.png", np.repeat(gray[:, :, None], 3, axis=2))
    Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "gray16.png")   # 16-bit: 0..65535
    files["16-bit"] = ("gray16.png", np.repeat(gray[:, :, None], 3, axis=2))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:8, :8, 3] = 0                           # a transparent corner shows as white
    Image.fromarray(rgba).save(folder / "rgba.png")
    shown = rgb.copy()
    shown[:8, :8] = 255
    files["RGBA"] = ("rgba.png", shown)
    pal = Image.fromarray(rgb).quantize(colors=64)
    pal.save(folder / "palette.png")
    files["palette"] = ("palette.png", np.asarray(pal.convert("RGB")))
    wide = np.ascontiguousarray(rgb[:, :96])     # 128 high × 96 wide, stored rotated with EXIF orientation 6
    stored = Image.fromarray(np.rot90(wide, k=1))  # what a camera writes: pixels sideways + "rotate 90° CW"
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(folder / "exif.png", exif=exif)
    files["EXIF-rotated"] = ("exif.png", wide)
    return files


def test_unusual_images_decode_to_what_a_viewer_shows(env_base, tmp_path):
    from regionvlm.data.processing import load_image

    data, _ = env_base
    for kind, (name, expected) in _unusual_images(data / "images" / IMAGE, tmp_path).items():
        got = np.asarray(load_image(tmp_path / name))
        assert got.shape == expected.shape and got.dtype == np.uint8, kind
        assert np.abs(got.astype(int) - expected).max() <= 1, kind


def test_unusual_images_work_through_predict(env_base, tmp_path, capsys):
    data, export = env_base
    files = _unusual_images(data / "images" / IMAGE, tmp_path)
    rows = [row(image=name, id=kind) for kind, (name, _) in files.items()]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "a.jsonl"
    assert main(["predict", "--model", str(export), "--input", str(tmp_path / "q.jsonl"), "--out", str(out),
                 "--image-root", str(tmp_path), "--device", "cpu"]) == 0, capsys.readouterr().err
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["id"] for a in answers] == list(files) and all(isinstance(a["answer"], str) for a in answers)


def test_dataset_image_paths_stay_under_their_root(env_base, tmp_path):
    from regionvlm.errors import DataError
    from regionvlm.registry import DATASETS

    data, _ = env_base
    ann = tmp_path / "conv.json"
    ann.write_text(json.dumps([{"id": "x", "image": "../secret.png",
                                "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "a"}]}]))
    ds = DATASETS.build({"type": "llava", "path": str(ann), "image_root": str(data / "images")})
    with pytest.raises(DataError, match="leads out of the image root"):
        ds[0]


@pytest.mark.parametrize(("name", "build", "fragments"), [c for c in HARDEN_CASES if c[0].startswith("predict-")],
                         ids=[c[0] for c in HARDEN_CASES if c[0].startswith("predict-")])
def test_predict_refuses_before_the_model_loads(name, build, fragments, env_base, tmp_path, capsys, monkeypatch):
    """Every predict check of issue 23 runs before any work: with loading the model made to fail, each case
    still ends with its own one-line error (not with the loading failure)."""
    from regionvlm.inference import RegionChat

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs and outputs were checked")

    monkeypatch.setattr(RegionChat, "from_pretrained", no_loading)
    data, export = env_base
    argv = build(Env(tmp=tmp_path, data=data, export=export))
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert all(f in err for f in fragments) and "loaded before" not in err, err


def test_the_catalogue_in_docs_lists_every_case():
    """docs/errors.md's table and CASES are one list: a case without a row, or a row without a case, fails."""
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text()
    catalogue = text.split("## The catalogue", 1)[1].split("\n## ", 1)[0]  # (serve's requests have their own)
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|", catalogue, re.M)
    assert sorted(rows) == sorted(c[0] for c in CASES)
