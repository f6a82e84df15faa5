"""benchmarks/perf/gpu_check.py, the prepared GPU check of issue 10, run end to end on CPU with the tiny preset
(``--tiny``): the same code path a GPU machine runs on the 7B-shaped recipe."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "perf" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_the_figures(gpu_check, tmp_path):
    from regionvlm.engine.plan import plan

    result = gpu_check.main(["--tiny", "--micro-batch", "2", "--seq", "96", "--regions", "3", "--warmup", "1",
                             "--steps", "2", "--peak-tflops", "0.01", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert written["tokens_per_s"] == pytest.approx(result["tokens_per_s"])
    assert written["config"] == "projects/rgpt/tiny/stage2.yaml" and written["timed_steps"] == 2
    step = sum(written["step_seconds"]) / 2
    assert written["tokens_per_s"] == pytest.approx(2 * 96 / step)
    assert written["regions_per_s"] == pytest.approx(2 * 3 / step)
    cfg = gpu_check.load(True, None, 2, 96, "cpu")
    assert written["flops_per_step"] == plan(cfg, gpus=1)["flops_per_step"]
    assert written["mfu"] == pytest.approx(written["flops_per_step"] / step / 1e12 / 0.01)
    assert written["plan_memory_gib"]["total"] > 0 and written["measured_peak_gib"] is None  # no CUDA: no peak
    assert written["setting"]["micro_batch"] == 2 and written["setting"]["context_length"] == 96


def test_synthetic_batches_are_full_rows_with_the_model_s_placeholders(gpu_check):
    from regionvlm.tokens import IGNORE_INDEX

    cfg = gpu_check.load(True, None, 2, 120, "cpu")
    model, _ = gpu_check.build(cfg, "cpu")
    b, = gpu_check.synthetic_batches(model, 2, 120, regions=4, steps=1)
    assert b.input_ids.shape == (2, 120) and bool(b.attention_mask.all())
    per_row = (b.input_ids == model.region_token_id).sum(1)
    assert per_row.tolist() == [4 * model.tokens_per_region] * 2
    assert (b.input_ids == model.image_token_id).sum(1).tolist() == [model.num_image_tokens] * 2
    assert len(b.region_masks) == len(b.region_boxes) == len(b.region_mentions) == 8
    assert b.region_image_index.tolist() == [0] * 4 + [1] * 4
    scored = b.labels != IGNORE_INDEX
    # every scored token is text (never a placeholder), and a context shorter than 256 is scored after the questions
    assert not bool((scored & ((b.input_ids == model.image_token_id) | (b.input_ids == model.region_token_id))).any())
    assert bool(torch.equal(b.labels[scored], b.input_ids[scored]))
    masks_area = b.region_masks.flatten(1).sum(1)
    boxes_area = (b.region_boxes[:, 2] - b.region_boxes[:, 0]) * (b.region_boxes[:, 3] - b.region_boxes[:, 1])
    assert torch.equal(masks_area, boxes_area.clamp(max=model.image_size ** 2))  # masks are the boxes
    with pytest.raises(SystemExit, match="do not fit the context"):
        gpu_check.synthetic_batches(model, 1, 40, regions=4, steps=1)


def test_layers_are_reduced_to_what_plan_fits(gpu_check):
    """The bisection keeps the most layers whose plan fits the share of the GPU (on the tiny preset's 3 layers)."""
    from regionvlm.engine.plan import plan

    cfg = gpu_check.load(True, None, None, None, "cpu")
    totals = {}
    for n in (1, 2, 3):
        cfg["model"]["llm"]["config"]["num_hidden_layers"] = n
        totals[n] = plan(cfg, gpus=1)["memory_gib"]["total"]
    assert totals[1] < totals[2] < totals[3]
    for n, gib in ((3, totals[3] / 0.8), (2, (totals[2] + totals[3]) / 2 / 0.8), (1, totals[1] / 0.8)):
        cfg["model"]["llm"]["config"]["num_hidden_layers"] = 3
        assert gpu_check.fitting_layers(cfg, gib) == n
        assert cfg["model"]["llm"]["config"]["num_hidden_layers"] == n


def test_peak_by_device_name(gpu_check):
    assert gpu_check.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_check.peak_tflops("Some other card") is None
