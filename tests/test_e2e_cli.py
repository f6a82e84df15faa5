"""End to end through the CLI on the tiny preset: synthetic data → stage 1 → stage 2 (init_from) → export →
reload and generate → eval → score → predict (single and batch, resumable) → pictures.

A few optimisation steps only: this checks the plumbing, not the learning (the README's `make demo` does)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from regionvlm.cli import main

TINY = Path(__file__).resolve().parents[1] / "projects" / "rgpt" / "tiny"
FAST = ["trainer.max_steps=3", "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=3", "data.batch_size=4", "data.num_workers=0",
        "data.val.0.max_samples=4"]


@pytest.fixture(scope="module")
def workspace(tiny_workspace):
    return tiny_workspace


@pytest.fixture(scope="module")
def stage2(workspace):
    assert main(["train", str(TINY / "stage1.yaml"), *FAST]) == 0
    stage1 = workspace / "runs" / "rgpt-tiny-stage1"
    assert (stage1 / "config.yaml").is_file() and (stage1 / "checkpoints" / "last.ckpt").is_file()
    assert (stage1 / "logs" / "metrics.csv").is_file()
    assert main(["train", str(TINY / "stage2.yaml"), *FAST]) == 0
    return workspace / "runs" / "rgpt-tiny-stage2"


def test_stage2_starts_from_stage1_export(stage2, workspace):
    from safetensors.torch import load_file

    from regionvlm.config import load_config
    from regionvlm.engine.module import RegionVLMModule

    s1 = load_file(str(workspace / "runs" / "rgpt-tiny-stage1" / "export" / "model.safetensors"))
    # stage 2's initial weights, built as its run built them (its resolved config, configure_model) ...
    config = load_config(stage2 / "config.yaml")
    from omegaconf import OmegaConf

    module = RegionVLMModule(OmegaConf.to_container(config, resolve=True))
    assert module.model is None  # built by Lightning in configure_model, not in __init__
    module.configure_model()
    module.configure_model()  # a second call keeps the built model
    initial = module.model.state_dict()
    # ... are exactly stage 1's export, every tensor of it (the export stores tied weights once)
    assert set(s1) <= set(initial)
    stored = {initial[k].data_ptr() for k in s1}
    assert all(initial[k].data_ptr() in stored for k in set(initial) - set(s1))
    for key, value in s1.items():
        assert torch.equal(initial[key], value), key
    # and stage 2 trained the LLM, which stage 1 froze
    s2 = load_file(str(stage2 / "export" / "model.safetensors"))
    key = next(k for k in s1 if k.startswith("llm.") and k.endswith("q_proj.weight"))
    assert not torch.equal(s1[key], s2[key])
    metrics = (stage2 / "logs" / "metrics.csv").read_text()
    assert "train/loss" in metrics and "train/samples_per_s" in metrics and "val/loss" in metrics
    samples = [json.loads(line) for line in (stage2 / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all({"step", "id", "prediction", "reference"} <= set(r) for r in samples)


def test_data_seed_is_an_error_naming_the_one_seed(workspace, capsys):
    assert main(["train", str(TINY / "stage1.yaml"), *FAST, "data.seed=3", "output.name=seeded"]) == 2
    err = capsys.readouterr().err
    assert "data.seed: there is one seed, the top-level 'seed'" in err
    assert not (workspace / "runs" / "seeded").exists()
    from regionvlm.config import load_config
    from regionvlm.errors import ConfigError

    recipe = workspace / "mine.yaml"
    recipe.write_text(f"_base_: {TINY / 'stage1.yaml'}\ndata: {{seed: 1}}\n")
    with pytest.raises(ConfigError, match=r"mine.yaml data.seed: there is one seed"):
        load_config(recipe)


def test_resume_continues_the_run(stage2):
    assert main(["train", str(TINY / "stage2.yaml"), *FAST, "trainer.max_steps=4", "--resume", "last"]) == 0
    ckpt = torch.load(stage2 / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4


def test_existing_run_dir_is_not_overwritten_silently(stage2, capsys):
    assert main(["train", str(TINY / "stage2.yaml"), *FAST]) == 2
    assert "run directory exists" in capsys.readouterr().err


def test_export_roundtrip_gives_identical_logits(stage2, tmp_path):
    from regionvlm.card import load_export
    from regionvlm.engine.checkpoint import load_checkpoint
    from regionvlm.inference import RegionChat

    assert main(["export", str(stage2), "--out", str(tmp_path / "exp")]) == 0
    assert main(["export", str(stage2), "--out", str(tmp_path / "exp")]) == 2  # refuses a non-empty folder
    assert main(["export", str(stage2), "--out", str(tmp_path / "exp16"), "--dtype", "bf16"]) == 0
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(tmp_path / "exp16" / "model.safetensors")).values()} == {torch.bfloat16}
    load_export(tmp_path / "exp16")  # loads (cast back into the fp32 model) without missing keys
    model_a, tok, cfg = load_checkpoint(stage2)
    model_b, _, _ = load_export(tmp_path / "exp")
    chat = RegionChat(model_a, tok, cfg, device="cpu")
    image = np.zeros((64, 80, 3), dtype=np.uint8)
    image[10:40, 20:50] = (220, 45, 45)
    sample = chat.sample(image, [[20, 10, 50, 40]], "What is <region1>?")
    batch = chat.collator([sample])
    with torch.no_grad():
        la, lb = model_a(batch)["logits"], model_b(batch)["logits"]
    torch.testing.assert_close(la, lb, rtol=0, atol=0)
    assert isinstance(chat.ask(image, [[20, 10, 50, 40]], "What is <region1>?", max_new_tokens=4), str)


def test_every_region_form_gives_the_same_mask():
    from pycocotools import mask as mask_utils

    from regionvlm.data.region_input import parse_regions

    h, w = 40, 50
    mask = np.zeros((h, w), dtype=bool)
    mask[5:25, 10:30] = True
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    forms = [[10, 5, 30, 25], mask, [[10, 5, 30, 5, 30, 25, 10, 25]], rle, torch.from_numpy(mask),
             "box:10,5,30,25", "polygon:10,5,30,5,30,25,10,25", {"box": [10, 5, 30, 25]},
             {"bbox": [10, 5, 20, 20]}, {"segmentation": rle}, mask.astype(np.uint8)]
    masks = [parse_regions([f]).with_image_size(h, w).to_masks()[0] for f in forms]
    for m in masks:
        assert np.array_equal(m, mask)


def test_eval_then_score_give_the_same_numbers(stage2, workspace, capsys):
    out = workspace / "eval"
    overrides = [f"eval.out_dir={out}", "eval.benchmarks.coco_cls.limit=6", "eval.benchmarks.pope.limit=6",
                 "eval.benchmarks.refcocog_caption.limit=4", "eval.benchmarks.refcocog_rec.limit=4",
                 "eval.benchmarks.vg_caption.limit=4", "eval.benchmarks.spatial.limit=4",
                 "eval.benchmarks.dlc.limit=4", "eval.benchmarks.dlc.max_new_tokens=4",
                 "eval.benchmarks.lvis_cls.limit=4", "eval.batch_size=4", "eval.num_workers=0",
                 "generation.max_new_tokens=4", "eval.gallery=2"]
    assert main(["eval", str(TINY / "eval.yaml"), "--model", str(stage2 / "export"), *overrides]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"coco_cls", "refcocog_caption", "refcocog_rec", "vg_caption", "pope", "spatial", "dlc",
                            "lvis_cls"}
    assert "| coco_cls |" in (out / "results.md").read_text()
    assert (out / "coco_cls" / "gallery.png").is_file()
    capsys.readouterr()
    synth = workspace / "data" / "synth"
    assert main(["score", "coco_cls", "--predictions", str(out / "coco_cls" / "predictions.jsonl"),
                 "--annotations", str(synth / "annotations" / "instances_val.json"), "--json",
                 "-o", "limit=6"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored == pytest.approx(results["coco_cls"])


def test_predict_single_with_picture(stage2, workspace, tmp_path, capsys):
    from PIL import Image

    image = sorted((workspace / "data" / "synth" / "images").glob("*.png"))[0]
    pic = tmp_path / "answer.png"
    assert main(["predict", "--model", str(stage2 / "export"), "--image", str(image), "--region", "box:10,10,60,60",
                 "--prompt", "What is <region1>?", "--max-new-tokens", "4", "--viz", str(pic)]) == 0
    assert capsys.readouterr().out.strip()
    drawn, original = np.asarray(Image.open(pic).convert("RGB")), np.asarray(Image.open(image).convert("RGB"))
    assert drawn.shape == original.shape
    assert (drawn[10:60, 10] != original[10:60, 10]).any()  # the box outline is drawn on its left edge
    assert main(["predict", "--model", str(stage2 / "export"), "--image", str(image), "--region", "circle:1",
                 "--prompt", "x"]) == 2


def test_predict_batch_is_resumable(stage2, workspace, tmp_path, capsys):
    image = str(sorted((workspace / "data" / "synth" / "images").glob("*.png"))[0])
    rows = [{"id": f"q{i}", "image": image, "regions": [{"bbox": [5 + i, 5, 30, 30]}],
             "conversations": [{"from": "human", "value": "<image>\nWhat is <region1>?"}]} for i in range(5)]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["predict", "--model", str(stage2 / "export"), "--input", str(inp), "--out", str(out),
            "--batch-size", "2", "--max-new-tokens", "3"]
    assert main(args) == 0
    done = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in done] == [f"q{i}" for i in range(5)]
    # simulate a run killed after two rows, mid-write of the third
    out.write_text("".join(json.dumps(r) + "\n" for r in done[:2]) + '{"id": "q2", "ans')
    assert main(args) == 0
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in again) == [f"q{i}" for i in range(5)]
    assert again[:2] == done[:2]
    assert main(["viz", str(out), "--out", str(tmp_path / "pics")]) == 0
    assert len(list((tmp_path / "pics").glob("*.png"))) == 5


def test_predict_reads_a_zero_one_mask_png_as_the_same_mask(stage2, workspace, tmp_path, capsys):
    """The README's rule, 'non-zero = inside', on the command line too: a 0/1 PNG (what numpy's astype(uint8)
    writes) is the mask a 0/255 PNG is, and gives the same answer (the CLI kept pixels > 127: 'mask is empty')."""
    from PIL import Image

    image = sorted((workspace / "data" / "synth" / "images").glob("*.png"))[0]
    w, h = Image.open(image).size
    inside = np.zeros((h, w), dtype=np.uint8)
    inside[10:60, 10:60] = 1
    answers = []
    for name, values in (("zero_one.png", inside), ("zero_255.png", inside * 255)):
        Image.fromarray(values).save(tmp_path / name)
        assert main(["predict", "--model", str(stage2 / "export"), "--image", str(image), "--region",
                     f"mask:{tmp_path / name}", "--prompt", "What is <region1>?", "--max-new-tokens", "4"]) == 0
        answers.append(capsys.readouterr().out.strip())
    assert answers[0] == answers[1]  # (on the old rule the 0/1 mask was "empty": exit 2)


def test_an_export_asks_in_the_label_set_it_was_trained_on(workspace, tmp_path, capsys):
    """``vocabulary: categories`` trains with the dataset's names in the question; the card records the names
    themselves (from the datasets as built), so RegionChat, predict and serve ask exactly that — from the
    training run's export and from an export of its checkpoint alike (the card stored only 'categories', and
    inference asked '... a single word or phrase.')."""
    import yaml

    from regionvlm import RegionChat

    over = [*FAST, "output.name=vocab", "data.train.0.prompt={type: region_classification, vocabulary: categories}",
            "trainer.limit_val_batches=0", "~data.val"]
    assert main(["train", str(TINY / "stage1.yaml"), *over]) == 0
    run = workspace / "runs" / "vocab"
    names = json.loads((workspace / "data" / "synth" / "annotations" / "instances_train.json").read_text())
    names = [c["name"] for c in names["categories"]]
    assert main(["export", str(run / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "from_ckpt")]) == 0
    for export in (run / "export", tmp_path / "from_ckpt"):
        card = yaml.safe_load((export / "config.yaml").read_text())
        assert card["prompts"]["region_classification"]["vocabulary"] == names
        question = RegionChat.from_pretrained(export, device="cpu").task_question("region_classification")
        assert question.endswith(f"Answer the question using one of these category names: {', '.join(names)}.")


def test_a_run_that_failed_before_its_first_checkpoint_does_not_block_its_rerun(workspace, capsys):
    """A train that fails early leaves config.yaml and logs/ but no checkpoint: the rerun starts (it said 'pass
    --resume last', and --resume last said 'no checkpoint')."""
    over = [*FAST, "output.name=failed_early", "trainer.max_steps=1", "trainer.limit_val_batches=0", "~data.val"]
    run = workspace / "runs" / "failed_early"
    (run / "logs").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "config.yaml").write_text("model: {}\n")
    (run / "logs" / "metrics.csv").write_text("step,train/loss\n")
    assert main(["train", str(TINY / "stage1.yaml"), *over]) == 0
    assert "an earlier run saved no checkpoint; starting again" in capsys.readouterr().err
    assert (run / "export" / "model.safetensors").is_file() and (run / "logs" / "metrics.1.csv").is_file()
    assert main(["train", str(TINY / "stage1.yaml"), *over]) == 2  # now it has one: refused as before
    assert "run directory exists" in capsys.readouterr().err


def test_data_show_previews_what_a_dataset_node_renders(workspace, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "show.png"
    assert main(["data", "show", str(TINY / "stage2.yaml"), "-n", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "== data.train[0]: coco_instances" in text and "[region_classification]" in text
    assert "Q: <image>" in text and "\nA: " in text and "regions: <region1>" in text
    with Image.open(out) as im:
        assert im.format == "PNG" and im.height > 100
    assert main(["data", "show", str(TINY / "stage2.yaml"), "--split", "val", "-n", "1"]) == 0
    assert "What category name best describes" in capsys.readouterr().out  # evaluation: the first phrasing
    assert main(["data", "show", str(TINY / "stage2.yaml"), "-n", "0"]) == 2
