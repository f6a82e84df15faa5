"""GPU check of issue 10: the 7B-shaped RGPT stage-2 config, random init, trained for a few steps through the
framework (RegionVLMModule + Lightning's Trainer, the recipe's precision), measuring tokens/s, model FLOPs
utilisation (MFU) and `regionvlm plan`'s memory estimate against the measured peak. Writes ``gpu_check.json``.

- No download: the model is built from its architecture alone (``regionvlm.engine.plan.architecture_only``:
  CLIP-L/336 and Vicuna-7B's config.json values) with random weights, directly on the device.
- The LLM's layer count is reduced until `plan` says the run fits 80 % of the GPU's memory (``--layers auto``),
  or set with ``--layers``; everything else is the recipe's (bf16 LLM, gradient checkpointing, micro-batch =
  ``data.batch_size``, context = ``data.max_length``).
- Batches are synthetic and full: every row is ``max_length`` tokens — the image's placeholders, ``--regions``
  region questions with short answers, then text; 256 scored tokens per row (what `plan` assumes for the logits).
- MFU = `plan`'s FLOPs per step (6·N·tokens for the trained LLM with N its parameters, plus the vision
  encoder's forward; recomputation under gradient checkpointing and attention scores not counted) / measured
  step time / the GPU's dense bf16 peak (``--peak-tflops``, else looked up from the device name).
- Memory: `plan`'s estimate per GPU vs ``torch.cuda.max_memory_allocated`` over the run (ratio; the issue's
  target is within 15 %).

GPU:  bash benchmarks/perf/gpu_check.sh            (writes $OUT/gpu_check.json, or ./gpu_check.json)
CPU:  python benchmarks/perf/gpu_check.py --tiny --out DIR   (the tiny preset, end to end: what the test runs)
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "projects/rgpt/stage2.yaml"
TINY = ROOT / "projects/rgpt/tiny/stage2.yaml"
SCORED_TOKENS = 256  # per row; `plan` sizes the logits for min(context, 256) scored positions
#: dense bf16 peaks (TFLOP/s, no sparsity) by a substring of torch.cuda.get_device_name
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0,
               "L40S": 362.0, "A10G": 70.0, "L4": 121.0}


def peak_tflops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in device_name), None)


def load(tiny: bool, layers: int | None, micro_batch: int | None, seq: int | None, device: str) -> dict:
    """The resolved config: the stage-2 recipe (or the tiny preset), architecture only, random init."""
    from omegaconf import OmegaConf

    from regionvlm.config import load_config
    from regionvlm.engine.plan import architecture_only

    cfg = OmegaConf.to_container(load_config(TINY if tiny else RECIPE, ["model.init_from=null"]), resolve=True)
    cfg["model"] = architecture_only(cfg["model"])
    if layers is not None:
        cfg["model"]["llm"]["config"]["num_hidden_layers"] = int(layers)
    if micro_batch is not None:
        cfg["data"]["batch_size"] = int(micro_batch)
    if seq is not None:
        cfg["data"]["max_length"] = int(seq)
    cfg["trainer"].update(accelerator="cuda" if device == "cuda" else "cpu", devices=1, strategy="auto",
                          limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False)
    cfg["optim"].update(schedule="constant", warmup_ratio=0.0)
    return cfg


def fitting_layers(cfg: dict, gpu_gib: float, share: float = 0.8) -> int:
    """Set ``cfg``'s LLM layer count to the most (up to the architecture's) with which `plan`'s estimate stays
    within ``share`` of the GPU's memory, and return it (a bisection over meta-device plans: nothing is
    allocated; memory grows with the layer count)."""
    from regionvlm.engine.plan import plan

    llm = cfg["model"]["llm"]["config"]

    def fits(n: int) -> bool:
        llm["num_hidden_layers"] = n
        return plan(cfg, gpus=1)["memory_gib"]["total"] <= share * gpu_gib

    lo, hi = 1, int(llm["num_hidden_layers"])
    if fits(hi):
        return hi
    while hi - lo > 1:  # fits(lo) is assumed (one layer), fits(hi) is false
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    llm["num_hidden_layers"] = lo
    return lo


def build(cfg: dict, device: str):
    """The random-init model (built on ``device``) and its tokenizer: the preset's own, or a stand-in with the
    architecture's vocabulary size (the 7B recipe's tokenizer would be a download)."""
    from regionvlm.engine.plan import ShapeTokenizer
    from regionvlm.model import build_model
    from regionvlm.plugins.llms import build_tokenizer

    llm = cfg["model"]["llm"]
    tok = build_tokenizer(llm) if llm.get("tokenizer") else ShapeTokenizer(int(llm["config"].get("vocab_size", 32000)))
    torch.manual_seed(int(cfg.get("seed", 0)))
    with torch.device(device):
        model = build_model(cfg["model"], tok)
    return model, tok


def synthetic_batches(model, batch: int, seq: int, regions: int, steps: int, seed: int = 0):
    """``steps`` full batches (no padding): BOS, the image placeholders, ``regions`` questions of 12 text tokens and
    a region placeholder with a 4-token answer each, then text; the answers and the last tokens scored."""
    from regionvlm.batch import Batch
    from regionvlm.tokens import IGNORE_INDEX

    g = torch.Generator().manual_seed(seed)
    text_ids = min(model.image_token_id, model.region_token_id)  # the placeholders come after the text vocabulary
    size = int(model.image_size)
    k = int(model.tokens_per_region)
    n_img = int(model.num_image_tokens)
    out = []
    for _ in range(steps):
        ids = torch.randint(3, text_ids, (batch, seq), generator=g)
        labels = torch.full((batch, seq), IGNORE_INDEX)
        ids[:, 0] = 1
        ids[:, 1:1 + n_img] = model.image_token_id
        pos = 1 + n_img
        for _ in range(regions):
            pos += 12
            ids[:, pos:pos + k] = model.region_token_id
            pos += k
            labels[:, pos:pos + 4] = ids[:, pos:pos + 4]
            pos += 4
        if pos > seq:
            raise SystemExit(f"--regions {regions}: {pos} tokens do not fit the context of {seq}")
        start = max(seq - max(min(SCORED_TOKENS, seq) - 4 * regions, 0), pos)
        labels[:, start:] = ids[:, start:]
        xy = torch.randint(0, size // 2, (batch * regions, 2), generator=g).float()
        wh = torch.randint(8, size // 2, (batch * regions, 2), generator=g).float()
        boxes = torch.cat([xy, xy + wh], 1)
        grid = torch.arange(size).float()
        masks = ((grid[None, :, None] >= boxes[:, 1, None, None]) & (grid[None, :, None] < boxes[:, 3, None, None])
                 & (grid[None, None, :] >= boxes[:, 0, None, None]) & (grid[None, None, :] < boxes[:, 2, None, None]))
        out.append(Batch(input_ids=ids, attention_mask=torch.ones_like(ids),
                         pixel_values=torch.randn(batch, 3, size, size, generator=g), region_masks=masks.float(),
                         region_boxes=boxes, region_image_index=torch.arange(batch).repeat_interleave(regions),
                         region_mentions=torch.arange(batch * regions), labels=labels,
                         ids=[str(i) for i in range(batch)], targets=[None] * batch))
    return out


class StepTimer:
    """Wall time of every training step, the device synchronised at each step's end (a Lightning callback)."""

    def __init__(self, device: str):
        import lightning as L

        outer = self

        class _Callback(L.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if device == "cuda":
                    torch.cuda.synchronize()
                outer.ends.append(time.perf_counter())

            def on_train_start(self, trainer, module):
                if device == "cuda":
                    torch.cuda.synchronize()
                outer.ends.append(time.perf_counter())

        self.ends: list[float] = []
        self.callback = _Callback()

    def step_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.ends, self.ends[1:])]


def train(cfg: dict, model, tok, batches: list, device: str) -> list[float]:
    """Train on ``batches`` through RegionVLMModule and Lightning's Trainer; seconds per step."""
    import lightning as L

    from regionvlm.engine.module import RegionVLMModule
    from regionvlm.engine.trainer import build_trainer

    module = RegionVLMModule(cfg, model=model, tokenizer=tok)
    timer = StepTimer(device)
    trainer = build_trainer(cfg, None, callbacks=[timer.callback], max_steps=len(batches), max_epochs=1,
                            log_every_n_steps=1)

    class Data(L.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)

    trainer.fit(module, datamodule=Data())
    return timer.step_seconds()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="the tiny preset on CPU (a smoke test of this script)")
    ap.add_argument("--layers", default="auto", help="LLM layers: 'auto' (the most that plan fits in 80 %% of the "
                    "GPU), or a number")
    ap.add_argument("--micro-batch", type=int, default=None, help="default: the recipe's data.batch_size")
    ap.add_argument("--seq", type=int, default=None, help="tokens per row; default: the recipe's data.max_length")
    ap.add_argument("--regions", type=int, default=8, help="region questions per row (default 8)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="timed steps after the warm-up")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (default: by name)")
    ap.add_argument("--out", default=os.environ.get("OUT") or ".", help="folder for gpu_check.json (default $OUT)")
    args = ap.parse_args(argv)

    from regionvlm.data.formats import write_json
    from regionvlm.engine.plan import plan

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)  # tiny tensors: OpenMP threads contending with other processes cost far more
    if not args.tiny and device != "cuda":
        raise SystemExit("no CUDA device: run with --tiny for the CPU smoke test")
    t0 = time.perf_counter()
    layers = None if args.layers == "auto" else int(args.layers)
    cfg = load(args.tiny, layers, args.micro_batch, args.seq, device)
    name, gpu_gib = platform.processor() or "cpu", None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        name, gpu_gib = props.name, props.total_memory / 1024 ** 3
        if layers is None:
            fitting_layers(cfg, gpu_gib)
    estimate = plan(cfg, gpus=1)
    batch, seq = int(cfg["data"]["batch_size"]), int(cfg["data"]["max_length"])
    model, tok = build(cfg, device)
    batches = synthetic_batches(model, batch, seq, args.regions, args.warmup + args.steps)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = train(cfg, model, tok, batches, device)[args.warmup:]
    step = sum(seconds) / len(seconds)
    peak = args.peak_tflops or (peak_tflops(name) if device == "cuda" else None)
    achieved = estimate["flops_per_step"] / step / 1e12
    measured = torch.cuda.max_memory_allocated() / 1024 ** 3 if device == "cuda" else None
    result = {
        "device": name, "gpu_memory_gib": gpu_gib, "torch": torch.__version__,
        "config": str((TINY if args.tiny else RECIPE).relative_to(ROOT)),
        "llm_layers": int(cfg["model"]["llm"]["config"]["num_hidden_layers"]),
        "parameters": estimate["total"], "setting": estimate["setting"],
        "regions_per_row": args.regions, "timed_steps": len(seconds), "step_seconds": seconds,
        "tokens_per_s": batch * seq / step, "regions_per_s": batch * args.regions / step,
        "flops_per_step": estimate["flops_per_step"], "achieved_tflops": achieved,
        "peak_tflops": peak, "mfu": achieved / peak if peak else None, "mfu_target": 0.45,
        "plan_memory_gib": estimate["memory_gib"], "measured_peak_gib": measured,
        "plan_over_measured": estimate["memory_gib"]["total"] / measured if measured else None,
        "wall_seconds": time.perf_counter() - t0,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "gpu_check.json", result, indent=1)
    mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a (no peak known)"
    mem = (f"plan {estimate['memory_gib']['total']:.1f} GiB vs measured peak {measured:.1f} GiB (ratio "
           f"{result['plan_over_measured']:.2f})") if measured else f"plan {estimate['memory_gib']['total']:.2f} GiB"
    print(f"{name}: {result['config']} with {result['llm_layers']} LLM layers, micro-batch {batch} × {seq} tokens: "
          f"{result['tokens_per_s']:.0f} tokens/s, {achieved:.1f} TFLOP/s, MFU {mfu} (target ≥ 45 %); {mem}; "
          f"wrote {out / 'gpu_check.json'} in {result['wall_seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
