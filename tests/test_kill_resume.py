"""Killed jobs (issue 12): `train`, `eval` and batch `predict` run as real subprocesses, are killed with SIGKILL,
and rerun; the result equals an uninterrupted run's (same weights, same rows, none lost or duplicated). And a
NaN/inf loss is never trained on: it stops training with a clear message, or the step is skipped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from regionvlm.cli import main

TINY = Path(__file__).resolve().parents[1] / "projects" / "rgpt" / "tiny"
# batches of 4 with a validation and a checkpoint every 2 steps (the training position is restored exactly: the
# sampler derives epoch and skip from the batches trained)
SMALL = ["data.batch_size=4", "data.num_workers=0", "trainer.limit_val_batches=1", "trainer.val_check_interval=2",
         "data.val.0.max_samples=2", "trainer.log_every_n_steps=1", "generation.max_new_tokens=2"]


def cli(*args: str, env: dict, kill_after: str | None = None, sig: str = "SIGKILL") -> subprocess.Popen:
    """``regionvlm ARGS`` in a subprocess. ``kill_after``: ``"module:function:count"`` (``function`` may be
    ``Class.method``), the process sends itself ``sig`` right after its ``count``-th call of that function returns
    (a kill at an exact point, however loaded the machine is: polling from outside can miss a short window)."""
    code = "import sys\nfrom regionvlm.cli import main\n"
    if kill_after:
        module, function, count = kill_after.split(":")
        *owner, name = function.split(".")
        code += (f"import os, signal, importlib\nm = importlib.import_module({module!r})\n"
                 + "".join(f"m = getattr(m, {part!r})\n" for part in owner)
                 + f"f, calls = getattr(m, {name!r}), [0]\n"
                 f"def wrapped(*a, **k):\n    out = f(*a, **k)\n    calls[0] += 1\n"
                 f"    if calls[0] == {int(count)}:\n        os.kill(os.getpid(), signal.{sig})\n    return out\n"
                 f"setattr(m, {name!r}, wrapped)\n")
    code += "sys.exit(main(sys.argv[1:]))\n"
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def killed(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    return out


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.fixture(scope="module")
def env(tiny_workspace):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


# 2 steps an epoch: the step-2 checkpoint closes it (Lightning then replays that epoch empty on resume)
@pytest.mark.parametrize("samples", [32, 8], ids=["mid-epoch", "epoch-end"])
def test_train_killed_after_a_checkpoint_resumes_to_the_same_weights(env, tmp_path, samples):
    from safetensors.torch import load_file

    common = [str(TINY / "stage1.yaml"), f"data.train.0.max_samples={samples}", *SMALL, "trainer.max_steps=6",
              f"output.root={tmp_path}"]
    finish(cli("train", *common, "output.name=whole", env=env))
    # killed right after the first checkpoint, at step 2 (atomic writes: config.yaml, the step-2 checkpoint, then
    # last.ckpt)
    killed(cli("train", *common, "output.name=cut", env=env, kill_after="regionvlm.io:atomic_write:3"))
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert _checkpoint_step(last) == 2 and not (tmp_path / "cut" / "export").exists()
    finish(cli("train", *common, "output.name=cut", "--resume", "last", env=env))
    whole = load_file(tmp_path / "whole" / "export" / "model.safetensors")
    resumed = load_file(tmp_path / "cut" / "export" / "model.safetensors")
    assert whole.keys() == resumed.keys()
    different = [k for k in whole if not torch.equal(whole[k], resumed[k])]
    assert not different, different[:5]
    assert _checkpoint_step(tmp_path / "cut" / "checkpoints" / "last.ckpt") == 6


def test_train_stopped_by_sigterm_saves_its_step_and_resumes_to_the_same_weights(env, tmp_path):
    """SIGTERM (a scheduler's preemption) during step 3: the step finishes, last.ckpt holds it (the periodic
    checkpoints are at steps 2, 4, 6), exit 143; the resumed run ends with the weights of an uninterrupted one,
    and its last.ckpt is the final step 7, not the periodic step 6."""
    from safetensors.torch import load_file

    common = [str(TINY / "stage1.yaml"), "data.train.0.max_samples=32", "data.batch_size=4", "data.num_workers=0",
              "trainer.limit_val_batches=0", "trainer.checkpoint_every_n_steps=2", "trainer.max_steps=7",
              f"output.root={tmp_path}"]
    finish(cli("train", *common, "output.name=whole", env=env))
    assert _checkpoint_step(tmp_path / "whole" / "checkpoints" / "last.ckpt") == 7
    assert [p.name for p in (tmp_path / "whole" / "checkpoints").iterdir()] == ["last.ckpt"]  # no last-v1.ckpt
    proc = cli("train", *common, "output.name=cut", env=env, sig="SIGTERM",
               kill_after="regionvlm.engine.module:RegionVLMModule.training_step:3")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, out[-3000:]
    assert "stopped by SIGTERM" in out and "--resume last" in out
    assert _checkpoint_step(tmp_path / "cut" / "checkpoints" / "last.ckpt") == 3
    assert not (tmp_path / "cut" / "export").exists()
    finish(cli("train", *common, "output.name=cut", "--resume", "last", env=env))
    whole = load_file(tmp_path / "whole" / "export" / "model.safetensors")
    resumed = load_file(tmp_path / "cut" / "export" / "model.safetensors")
    assert [k for k in whole if not torch.equal(whole[k], resumed[k])] == []
    assert _checkpoint_step(tmp_path / "cut" / "checkpoints" / "last.ckpt") == 7


def _questions(tmp_path: Path, n: int) -> Path:
    rows = [{"id": f"q{i}", "image": f"synth_{25 + i % 12:06d}.png", "regions": [{"bbox": [i, i, 40 + i, 40 + i]}],
             "conversations": [{"from": "human", "value": "<image>\nWhat is <region1>?"}]} for i in range(n)]
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_predict_killed_mid_file_resumes_without_losing_or_duplicating_a_row(env, tiny_workspace, tiny_export,
                                                                              tmp_path):
    questions = _questions(tmp_path, 24)
    args = ["predict", "--model", str(tiny_export[3]), "--input", str(questions), "--batch-size", "1",
            "--image-root", str(tiny_workspace / "data" / "synth" / "images"), "--max-new-tokens", "4",
            "--device", "cpu"]
    finish(cli(*args, "--out", str(tmp_path / "whole.jsonl"), env=env))
    out = tmp_path / "cut.jsonl"
    killed(cli(*args, "--out", str(out), env=env, kill_after="os:fsync:3"))   # after the third answered batch
    done_before = out.read_text().count("\n")
    assert done_before == 3
    with out.open("a") as f:
        f.write('{"id": "q2')  # and a torn last line, as a kill in the middle of a write leaves
    log = finish(cli(*args, "--out", str(out), env=env))
    assert f"{done_before} already done" in log
    whole = [json.loads(line) for line in (tmp_path / "whole.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in resumed) == sorted(r["id"] for r in whole) and len(resumed) == 24
    assert {r["id"]: r["answer"] for r in resumed} == {r["id"]: r["answer"] for r in whole}


def test_eval_killed_between_benchmarks_resumes_without_losing_or_duplicating_a_row(env, tiny_workspace, tiny_export,
                                                                                     tmp_path):
    benchmarks = ["coco_cls", "pope"]
    drop = [f"~eval.benchmarks.{b}" for b in ("refcocog_caption", "refcocog_rec", "vg_caption", "spatial", "dlc")]
    args = ["eval", str(TINY / "eval.yaml"), "--model", str(tiny_export[3]), *drop,
            *[f"eval.benchmarks.{b}.limit=8" for b in benchmarks], "eval.batch_size=2", "eval.num_workers=0",
            "generation.max_new_tokens=2", "eval.gallery=0", "trainer.enable_progress_bar=false"]
    finish(cli(*args, f"eval.out_dir={tmp_path / 'whole'}", env=env))
    cut = tmp_path / "cut"
    # killed right after the first benchmark's predictions are written (coco_cls: eval.yaml's order), before pope's
    killed(cli(*args, f"eval.out_dir={cut}", env=env, kill_after="regionvlm.evaluation.runner:write_text:1"))
    assert (cut / "coco_cls" / "predictions.jsonl").is_file() and not (cut / "pope").exists()
    assert not (cut / "results.json").exists()
    log = finish(cli(*args, f"eval.out_dir={cut}", env=env))
    assert "coco_cls: predictions of the earlier run reused (8 rows)" in log
    for b in benchmarks:
        assert (cut / b / "predictions.jsonl").read_text() == (tmp_path / "whole" / b / "predictions.jsonl").read_text()
    assert json.loads((cut / "results.json").read_text()) == json.loads((tmp_path / "whole" / "results.json").read_text())
    # finished: a third run is refused rather than silently redone or mixed
    rerun = subprocess.run([sys.executable, "-m", "regionvlm.cli", *args, f"eval.out_dir={cut}"], env=env,
                           capture_output=True, text=True)
    assert rerun.returncode == 2 and "--overwrite" in rerun.stderr


# -- NaN / inf loss ---------------------------------------------------------------------------------------------
NAN_RUN = [str(TINY / "stage1.yaml"), "data.train.0.max_samples=12", "data.batch_size=4", "data.num_workers=0",
           "trainer.limit_val_batches=0", "trainer.max_epochs=1", "trainer.max_steps=-1", "trainer.log_every_n_steps=1"]


def inject_nan(monkeypatch, calls: set[int]) -> dict:
    """Make the training loss NaN at the given (0-based) forward calls; record the trainable weights when training
    starts."""
    from regionvlm.engine.module import RegionVLMModule
    from regionvlm.model import RegionVLM

    forward, seen = RegionVLM.forward, {"calls": 0}

    def poisoned(self, batch, *a, **kw):
        out = forward(self, batch, *a, **kw)
        if self.training:
            if seen["calls"] in calls:
                out["loss"] = out["loss"] * float("nan")
            seen["calls"] += 1
        return out

    def snapshot(self):
        seen["start"] = {k: v.detach().clone() for k, v in self.model.named_parameters() if v.requires_grad}

    monkeypatch.setattr(RegionVLM, "forward", poisoned)
    monkeypatch.setattr(RegionVLMModule, "on_train_start", snapshot)
    return seen


def test_nan_loss_stops_training_with_a_clear_message(tiny_workspace, tmp_path, monkeypatch, capsys):
    inject_nan(monkeypatch, {1})
    assert main(["train", *NAN_RUN, f"output.root={tmp_path}", "output.name=r"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: epoch 0, step 1: the loss is nan; training stopped")
    assert "trainer.on_nonfinite_loss=skip" in err
    assert not (tmp_path / "r" / "export").exists()


def test_nan_loss_steps_are_skipped_when_asked(tiny_workspace, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    seen = inject_nan(monkeypatch, {0, 1, 2})   # every step of the epoch
    assert main(["train", *NAN_RUN, "trainer.on_nonfinite_loss=skip", f"output.root={tmp_path}",
                 "output.name=all"]) == 0
    weights = load_file(tmp_path / "all" / "export" / "model.safetensors")
    assert seen["start"] and all(torch.equal(weights[k], v) for k, v in seen["start"].items())  # never stepped

    seen = inject_nan(monkeypatch, {1})          # one step of three
    assert main(["train", *NAN_RUN, "trainer.on_nonfinite_loss=skip", f"output.root={tmp_path}",
                 "output.name=one"]) == 0
    weights = load_file(tmp_path / "one" / "export" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert any(not torch.equal(weights[k], v) for k, v in seen["start"].items())
    log = (tmp_path / "one" / "logs" / "metrics.csv").read_text().splitlines()
    column = log[0].split(",").index("train/skipped_steps")
    assert {r.split(",")[column] for r in log[1:] if r.split(",")[column]} == {"1.0"}


def test_eval_output_folder_is_claimed_by_one_evaluation(tmp_path):
    from regionvlm.commands.eval_cmd import claim_out_dir
    from regionvlm.errors import UserError

    out, run, other = tmp_path / "eval", {"model": "/m", "benchmarks": {"pope": {}}}, {"model": "/n", "benchmarks": {}}
    assert claim_out_dir(out, run, overwrite=False) is False                # a fresh folder: nothing to resume
    assert claim_out_dir(out, run, overwrite=False) is True                 # the same evaluation again: resume
    assert claim_out_dir(out, other, overwrite=False) is False              # another, before any prediction
    (out / "pope").mkdir()
    (out / "pope" / "predictions.jsonl").write_text('{"id": 1, "text": "yes"}\n')
    with pytest.raises(UserError, match="predictions of another model"):
        claim_out_dir(out, run, overwrite=False)
    assert claim_out_dir(out, run, overwrite=True) is False                 # --overwrite: generate everything again
    (out / "results.json").write_text("{}\n")
    with pytest.raises(UserError, match="results of an earlier evaluation"):
        claim_out_dir(out, run, overwrite=False)


def test_a_resumed_runs_csv_log_is_kept_not_deleted(tmp_path):
    from regionvlm.engine.trainer import keep_csv_log

    log = tmp_path / "logs" / "metrics.csv"
    log.parent.mkdir()
    for n, rows in enumerate(["step\n0\n1\n", "step\n2\n3\n"], 1):
        log.write_text(rows)
        keep_csv_log(log)  # what `train --resume` does before Lightning's CSV logger deletes the file it finds
        assert not log.exists() and (log.parent / f"metrics.{n}.csv").read_text() == rows
    keep_csv_log(log)  # nothing to keep
    assert sorted(p.name for p in log.parent.iterdir()) == ["metrics.1.csv", "metrics.2.csv"]
