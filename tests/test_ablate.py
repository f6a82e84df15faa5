"""`regionvlm ablate`: spec checks, the region subsets against hand-made annotations, and a 2-variant × 1-seed
sweep through the real train/eval paths (table structure; a rerun skips finished cells)."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from regionvlm.cli import main

TINY = Path(__file__).resolve().parents[1] / "projects" / "rgpt" / "tiny"
OTHER_BENCHMARKS = ("refcocog_caption", "refcocog_rec", "vg_caption", "pope", "spatial", "dlc", "lvis_cls")


def write_spec(path: Path, **changes) -> Path:
    spec = {
        "train": str(TINY / "stage2.yaml"),
        "eval": str(TINY / "eval.yaml"),
        "overrides": ["model.init_from=null", "trainer.max_steps=2", "trainer.limit_val_batches=0",
                      "data.batch_size=4", "data.num_workers=0", "trainer.enable_progress_bar=false"],
        "eval_overrides": [*(f"~eval.benchmarks.{b}" for b in OTHER_BENCHMARKS), "eval.benchmarks.coco_cls.limit=10",
                           "eval.benchmarks.coco_cls.semantic=false", "eval.gallery=0", "eval.num_workers=0",
                           "generation.max_new_tokens=4"],
        "seeds": [0],
        "variants": {"tiny": [], "blind": ["~model.region_extractor.geometry", "~model.region_extractor.mask_resize",
                                           "model.region_extractor.type=zero"]},
        "splits": {"coco_cls": {"patch_size": 16, "image_size": 128, "overlap": 0.25}},
        "output": str(path.parent / "sweep"),
    }
    spec.update(changes)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_sweep_writes_the_table_and_a_rerun_skips_finished_cells(tiny_workspace, tmp_path, capsys):
    from PIL import Image

    spec = write_spec(tmp_path / "spec.yaml")
    out = tmp_path / "sweep"
    assert main(["ablate", str(spec), "--list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["0\ttiny\tseed=0\ttodo", "1\tblind\tseed=0\ttodo"]

    assert main(["ablate", str(spec)]) == 0
    log = capsys.readouterr().out
    assert "cell 0 tiny-seed0: ran" in log and "cell 1 blind-seed0: ran" in log
    table = json.loads((out / "table.json").read_text())
    assert list(table["variants"]) == ["tiny", "blind"] and table["missing"] == [] and table["seeds"] == [0]
    # every metric of the run except the subset sizes; the split accuracies are there
    assert "coco_cls.accuracy" in table["metrics"] and "coco_cls.accuracy_small" in table["metrics"]
    assert "coco_cls.accuracy_not_overlap" in table["metrics"]
    assert not any(m.split(".")[1].startswith("n_") for m in table["metrics"])
    for variant in ("tiny", "blind"):
        acc = table["variants"][variant]["coco_cls.accuracy"]
        assert acc["n"] == 1 and acc["std"] is None and 0.0 <= acc["mean"] <= 100.0  # one seed: no spread and acc["values"] == [acc["mean"]]
        cell = json.loads((out / "cells" / f"{variant}-seed0" / "result.json").read_text())
        m = cell["metrics"]
        assert cell["seed"] == 0 and m["coco_cls.accuracy"] == acc["mean"]
        assert m["coco_cls.n_small"] + m["coco_cls.n_not_small"] == 10
        assert m["coco_cls.n_overlap"] + m["coco_cls.n_not_overlap"] == 10
        # the subsets' accuracies recombine into the overall one
        parts = [(m[f"coco_cls.accuracy_{k}"], m[f"coco_cls.n_{k}"]) for k in ("small", "not_small") if m[f"coco_cls.n_{k}"]]
        assert sum(a * n for a, n in parts) / 10 == pytest.approx(m["coco_cls.accuracy"])
    blind = yaml.safe_load((out / "cells" / "blind-seed0" / "config.yaml").read_text())
    assert blind["model"]["region_extractor"]["type"] == "zero" and blind["seed"] == 0
    md = (out / "table.md").read_text().splitlines()
    assert md[0] == "| variant | " + " | ".join(table["metrics"]) + " |"
    assert md[2].startswith("| tiny | ") and md[3].startswith("| blind | ") and len(md[2].split(" | ")) == len(table["metrics"]) + 1
    assert " ± —" in md[2] and " ± 0.0" not in md[2]  # one seed: the spread is unknown, not 0
    with Image.open(out / "chart.png") as im:
        assert im.format == "PNG" and im.width >= 420

    before = {c: (out / "cells" / c / "result.json").stat().st_mtime_ns for c in ("tiny-seed0", "blind-seed0")}
    assert main(["ablate", str(spec)]) == 0
    log = capsys.readouterr().out
    assert "cell 0 tiny-seed0: skipped" in log and "cell 1 blind-seed0: skipped" in log
    assert before == {c: (out / "cells" / c / "result.json").stat().st_mtime_ns for c in before}

    # a cell trained but not scored is only evaluated again; the table merges what has finished
    (out / "cells" / "blind-seed0" / "result.json").unlink()
    assert main(["ablate", str(spec), "--table"]) == 0
    assert json.loads((out / "table.json").read_text())["missing"] == ["blind-seed0"]
    assert "not finished: blind-seed0" in (out / "table.md").read_text()
    capsys.readouterr()
    assert main(["ablate", str(spec), "--list"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "1\tblind\tseed=0\ttodo"
    assert main(["ablate", str(spec), "--cell", "1"]) == 0
    assert "cell 1 blind-seed0: resumed" in capsys.readouterr().out
    assert (out / "cells" / "blind-seed0" / "result.json").is_file()


def test_region_subsets_known_answer():
    from regionvlm.ablation.cells import region_subsets
    from regionvlm.data.formats import CocoInstances

    def box(x, y, w, h):
        return {"segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]], "bbox": [x, y, w, h], "area": w * h}

    coco = CocoInstances({
        "images": [{"id": 1, "width": 256, "height": 128, "file_name": "a.png"}],  # encoder sees it at scale 1/2
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, **box(0, 0, 40, 40)},      # 400 px at 128: big
            {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, **box(10, 10, 20, 20)},    # 100 px: small; inside 1
            {"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 0, **box(200, 80, 30, 40)},   # 300 px: not small, alone
        ]})
    subsets = region_subsets(coco, [1, 2, 3], patch_size=16, image_size=128, overlap=0.25)
    # box 1 holds object 2 (400 of 1600 px = 25 %); box 2 is all object 1's pixels; box 3 holds nothing else
    assert subsets == {"small": {2}, "overlap": {1, 2}}
    assert region_subsets(coco, [1, 2, 3], 16, 128, overlap=0.3)["overlap"] == {2}
    assert np.isclose(coco.ann_to_mask(2).sum(), 400)


@pytest.mark.parametrize("change, message", [
    ({"varients": {}}, "spec.yaml varients: unknown key"),
    ({"seeds": [0, 0]}, "spec.yaml seeds: expected a list of distinct integers"),
    ({"variants": {"a b": []}}, "spec.yaml variants.a b: a variant name is a folder name"),
    ({"variants": {"a": "x=1"}}, "spec.yaml variants.a: expected a list of key=value strings"),
    ({"splits": {"coco_cls": {"patch_size": 16}}}, "spec.yaml splits.coco_cls: expected positive numbers"),
    ({"train": "nowhere.yaml"}, "nowhere"),
    ({"variants": {"a": {"train": "nowhere.yaml"}}}, "spec.yaml variants.a.train"),
    ({"variants": {"a": {"trian": "x.yaml"}}}, "spec.yaml variants.a.trian: unknown key"),
])
def test_bad_spec_is_one_line_naming_the_field(tmp_path, capsys, change, message):
    spec = write_spec(tmp_path / "spec.yaml", **change)
    assert main(["ablate", str(spec), "--list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_cell_out_of_range_is_a_user_error(tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.yaml")
    assert main(["ablate", str(spec), "--cell", "2"]) == 2
    assert "--cell 2:" in capsys.readouterr().err


def test_shipped_spec_lists_six_variants_by_three_seeds(capsys):
    assert main(["ablate", str(TINY / "ablations.yaml"), "--list", "--out", "/nonexistent/ablations"]) == 0
    rows = [r.split("\t") for r in capsys.readouterr().out.splitlines()]
    assert len(rows) == 18 and [r[1] for r in rows[:6]] == ["tiny", "no_refiner", "no_geometry", "roi_align",
                                                            "no_guidance", "blind"]
    assert {r[2] for r in rows} == {"seed=0", "seed=1", "seed=2"} and all(r[3] == "todo" for r in rows)


@pytest.mark.parametrize("variant", ["tiny", "no_guidance"])
def test_shipped_spec_evaluates_classification_only(variant):
    """A benchmark added to tiny/eval.yaml must not creep into every cell's evaluation (lvis_cls once did)."""
    from omegaconf import OmegaConf

    from regionvlm.ablation.spec import Cell, cell_overrides, load_spec
    from regionvlm.config import load_config

    spec = load_spec(TINY / "ablations.yaml", output="/nonexistent/ablations")
    _, eval_overrides = cell_overrides(spec, Cell(0, variant, 0))
    cfg = OmegaConf.to_container(load_config(spec.eval, eval_overrides), resolve=False)
    assert list(cfg["eval"]["benchmarks"]) == ["coco_cls"]


def test_a_variant_may_train_from_its_own_config(tmp_path):
    """What overrides cannot say (a dataset removed from a list) a variant says with its own training config."""
    from regionvlm.ablation.spec import cell_train_config, load_spec

    spec = load_spec(write_spec(tmp_path / "spec.yaml", variants={
        "mixed": [], "cls_only": {"train": str(TINY / "stage1.yaml"), "overrides": ["trainer.max_steps=1"]}}))
    mixed, cls_only = spec.cells()
    assert cell_train_config(spec, mixed) == TINY / "stage2.yaml"
    assert cell_train_config(spec, cls_only) == TINY / "stage1.yaml"


def test_jobs_run_cells_in_parallel_processes_and_merge_the_table(tiny_workspace, tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.yaml")
    out = tmp_path / "sweep"
    assert main(["ablate", str(spec), "--jobs", "2"]) == 0
    log = capsys.readouterr().out
    assert "[ablate] 2 cells, 2 at a time" in log
    assert "cell 0 tiny-seed0: ran (" in log and "cell 1 blind-seed0: ran (" in log
    assert json.loads((out / "table.json").read_text())["missing"] == []
    for index, cell in enumerate(("tiny-seed0", "blind-seed0")):  # each child's own output went to its log
        assert f"cell {index} {cell}: ran" in (out / "logs" / f"{cell}.log").read_text()
    assert main(["ablate", str(spec), "--jobs", "2"]) == 0
    assert "cell 0 tiny-seed0: skipped" in capsys.readouterr().out


def test_jobs_report_a_failing_cell_with_its_error_and_exit_code(tiny_workspace, tmp_path, capsys):
    # a missing data file is found by the cell's own `train` (a misspelt name or key is found before any cell
    # starts: the catalogue's ablate-variant-key-typo)
    spec = write_spec(tmp_path / "spec.yaml", variants={"broken": [f"data.train.0.ann_file={tmp_path}/no_such.json"]})
    assert main(["ablate", str(spec), "--jobs", "2"]) == 2
    log = capsys.readouterr().out
    assert "cell 0 broken-seed0: failed (exit 2" in log and "no_such.json" in log
    assert not (tmp_path / "sweep" / "table.md").exists()


def test_sigterm_to_a_parallel_sweep_reaches_its_cells(tiny_workspace, tmp_path):
    """A scheduler stopping `ablate --jobs 2` (SIGTERM to the parent) stops the cells too (no orphaned training),
    each saving its last step; exit 143, and the cells stay unfinished for a rerun to resume."""
    import os
    import signal
    import subprocess
    import sys
    import time

    spec = write_spec(tmp_path / "spec.yaml", overrides=[
        "model.init_from=null", "trainer.max_steps=100000", "trainer.limit_val_batches=0", "data.batch_size=2",
        "data.num_workers=0", "trainer.enable_progress_bar=false", "trainer.checkpoint_every_n_steps=1"])
    cells = tmp_path / "sweep" / "cells"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    parent = subprocess.Popen([sys.executable, "-m", "regionvlm", "ablate", str(spec), "--jobs", "2"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    lasts = [cells / c / "checkpoints" / "last.ckpt" for c in ("tiny-seed0", "blind-seed0")]
    while not all(p.is_file() for p in lasts) and parent.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    parent.send_signal(signal.SIGTERM)
    out, _ = parent.communicate(timeout=120)
    assert parent.returncode == 143, out[-3000:]
    for index, cell in enumerate(("tiny-seed0", "blind-seed0")):
        assert f"cell {index} {cell}: failed (exit 143" in out
        assert "stopped by SIGTERM" in (tmp_path / "sweep" / "logs" / f"{cell}.log").read_text()
        assert not (cells / cell / "result.json").exists()
