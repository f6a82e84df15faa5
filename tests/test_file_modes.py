"""Everything a tiny train → export → eval → predict run leaves is readable by the team: under umask 022 every file
is 0644 and every folder 0755 (temporary files are created 0600 and must not keep that mode after the rename),
and no temporary file is left behind. Also: Lightning checkpoints are written to a temporary name and renamed."""

import json
import os
import stat
from pathlib import Path

import pytest

from regionvlm.cli import main

TINY = Path(__file__).resolve().parents[1] / "projects" / "rgpt" / "tiny"
FAST = ["trainer.max_steps=2", "trainer.limit_val_batches=1", "trainer.val_check_interval=2", "data.batch_size=2",
        "data.num_workers=0", "data.val.0.max_samples=2"]


@pytest.fixture
def umask_022():
    before = os.umask(0o022)
    yield
    os.umask(before)


def modes(root: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for p in root.rglob("*"):
        out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def test_every_output_of_a_tiny_run_is_0644_or_0755(tiny_workspace, tmp_path, umask_022, capsys):
    runs = tmp_path / "runs"
    assert main(["train", str(TINY / "stage1.yaml"), *FAST, f"output.root={runs}", "output.name=r"]) == 0
    run = runs / "r"
    assert main(["export", str(run), "--out", str(tmp_path / "exported")]) == 0
    evaluated = tmp_path / "eval"
    keep = ["coco_cls", "pope"]
    drop = [f"~eval.benchmarks.{b}" for b in ("refcocog_caption", "refcocog_rec", "vg_caption", "spatial", "dlc")]
    assert main(["eval", str(TINY / "eval.yaml"), "--model", str(run / "export"), f"eval.out_dir={evaluated}",
                 *drop, *[f"eval.benchmarks.{b}.limit=2" for b in keep], "eval.num_workers=0",
                 "generation.max_new_tokens=2", "eval.gallery=1"]) == 0
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"id": "a", "image": "synth_000001.png", "regions": [{"bbox": [1, 1, 20, 20]}],
                                     "conversations": [{"from": "human", "value": "<image>\nWhat is <region1>?"}]}))
    answers = tmp_path / "answers" / "a.jsonl"
    answers.parent.mkdir()
    assert main(["predict", "--model", str(tmp_path / "exported"), "--input", str(questions), "--out", str(answers),
                 "--image-root", str(tiny_workspace / "data" / "synth" / "images"), "--max-new-tokens", "2"]) == 0
    capsys.readouterr()

    written = {"run": run, "export": tmp_path / "exported", "eval": evaluated, "answers": answers.parent}
    expected_files = {"run": {"config.yaml", "checkpoints/last.ckpt", "logs/metrics.csv", "export/model.safetensors",
                              "export/config.yaml", "samples.jsonl"},
                      "export": {"model.safetensors", "config.yaml", "tokenizer.json"},
                      "eval": {"results.json", "results.md", "coco_cls/predictions.jsonl", "pope/predictions.jsonl",
                               "coco_cls/gallery.png", "eval_run.json"},
                      "answers": {"a.jsonl"}}
    for name, root in written.items():
        found = modes(root)
        assert expected_files[name] <= set(found), (name, sorted(found))
        wrong = {p: oct(m) for p, m in found.items()
                 if m != (0o755 if (root / p).is_dir() else 0o644)}
        assert not wrong, (name, wrong)
        assert not [p for p in found if p.endswith((".tmp", ".old"))], (name, sorted(found))


def test_a_failed_checkpoint_save_leaves_the_previous_checkpoint(tmp_path):
    import torch

    from regionvlm.engine.checkpoint import atomic_checkpoint_io

    io = atomic_checkpoint_io()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed while saving")

    with pytest.raises(RuntimeError, match="killed while saving"):
        io.save_checkpoint({"step": torch.tensor(2), "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]   # no temporary file left
