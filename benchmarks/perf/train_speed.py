"""The speed table of the tiny preset (issue 10): a training-step breakdown, framework vs a bare PyTorch loop,
grouped vs one-region samples at 1/4/16/64 regions per image, padding waste and regions/s with length-grouped
batching and packing off/on, and inference throughput. Prints a table and writes JSON (``--out``). A
benchmark, not a test: numbers depend on the machine and its load (say which).

Usage: python benchmarks/perf/train_speed.py [--steps 8] [--out train_speed.json] [--threads 1]
"""

# ruff: noqa: B023  (the timed closures run at once, inside their loop iteration)
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from regionvlm.config import load_config
from regionvlm.data.collate import Collator
from regionvlm.data.datamodule import ProcessedDataset
from regionvlm.data.datasets.base import grouped_sample
from regionvlm.data.synth.writers import write_synthetic
from regionvlm.engine.build import build_model_and_tokenizer
from regionvlm.fusion import fuse
from regionvlm.model import structured_attention_mask
from regionvlm.processor import RegionProcessor
from regionvlm.registry import DATASETS

TINY = Path(__file__).resolve().parents[2] / "projects/rgpt/tiny/stage2.yaml"


def tiny():
    cfg = OmegaConf.to_container(load_config(TINY, ["model.init_from=null"]), resolve=True)
    torch.manual_seed(0)
    model, tok, _ = build_model_and_tokenizer(cfg["model"])
    proc = RegionProcessor.from_training_config(cfg["data"], model, tok)
    coll = proc.collator()
    return cfg, model.train(), tok, proc, coll


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def breakdown(model, batches):
    """Per phase, median seconds over the steps after the first (CPU: each phase's time is its wall time); the
    LLM phase includes building the grouped samples' attention mask and the backward pass of everything."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    rows = []
    for b in batches:
        r = {}
        feats, r["vision"] = timed(lambda: model.vision_encoder(b.pixel_values))
        refined, r["refiner"] = timed(lambda: model.feature_refiner(feats))
        regions, r["region extraction"] = timed(
            lambda: model.region_extractor(refined, b.region_masks, b.region_boxes, b.region_image_index))

        def fusion():
            merged = torch.nn.functional.adaptive_avg_pool2d(refined, model.global_grid)
            img = model.projector(merged.flatten(2).transpose(1, 2))
            reg = model.projector(regions)
            emb = model.llm.get_input_embeddings()(b.input_ids)
            return fuse(emb, b.input_ids, model.image_token_id, img, model.region_token_id, reg, b.region_mentions,
                        region_image_index=b.region_image_index)
        embeds, r["projector + fusion"] = timed(fusion)

        def llm():
            mask, extra = b.attention_mask, {}
            if b.turn_ids is not None or b.segment_ids is not None:  # grouped turns / packed rows
                mask = structured_attention_mask(b.attention_mask, b.segment_ids, b.turn_ids, embeds.dtype)
                extra["position_ids"] = b.position_ids
            out = model.llm(inputs_embeds=embeds, attention_mask=mask, **extra)
            loss = model.head(out.logits, b.labels)["loss"]
            loss.backward()
        _, r["LLM fwd + bwd (all)"] = timed(llm)
        _, r["optimizer"] = timed(lambda: (opt.step(), opt.zero_grad()))
        rows.append(r)
    rows = rows[1:] or rows  # the first step warms up
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def bare_loop(model, batches):
    """A minimal hand-written loop doing the tiny preset's work: forward, loss, backward, AdamW."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    t = time.perf_counter()
    for b in batches:
        loss = model(b)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
    return time.perf_counter() - t


def framework(cfg, model, tok, batches):
    """The same batches through the framework's LightningModule and Lightning's Trainer."""
    import lightning as L

    from regionvlm.engine.module import RegionVLMModule
    from regionvlm.engine.trainer import build_trainer

    cfg = {**cfg, "optim": {**cfg["optim"], "schedule": "constant", "warmup_ratio": 0.0}}
    module = RegionVLMModule(cfg, model=model, tokenizer=tok)
    trainer = build_trainer(cfg, None, max_steps=len(batches), enable_progress_bar=False, limit_val_batches=0,
                            log_every_n_steps=1)

    class Loader(L.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)

    t = time.perf_counter()
    trainer.fit(module, datamodule=Loader())
    return time.perf_counter() - t


def synthetic_group(proc, k, rng):
    """One image with ``k`` random box regions and one classification turn per region."""
    from regionvlm.data.structures import Regions

    img = (rng.random((128, 128, 3)) * 255).astype(np.uint8)
    boxes = [[float(x), float(y), float(x + 20), float(y + 20)] for x, y in rng.integers(0, 100, (k, 2))]
    turns = [[{"from": "human", "value": f"<image>\nWhat is <region{i + 1}>? Answer briefly."},
              {"from": "gpt", "value": "red circle"}] for i in range(k)]
    from PIL import Image
    sample = {"id": f"g{k}", "image": Image.fromarray(img), "regions": Regions([("box", b) for b in boxes],
                                                                                 (128, 128)),
              **grouped_sample(turns, None)}
    return proc.process_sample(sample)


def regions_per_image(model, tok, proc, ks, reps):
    """Forward + backward regions/s for one image with k regions: one grouped sample vs k one-region samples
    (no length limit, so no turn is dropped)."""
    coll = Collator(tok, model.num_image_tokens, model.tokens_per_region, max_length=None)
    rng = np.random.default_rng(0)
    out = {}
    for k in ks:
        g = synthetic_group(proc, k, rng)
        singles = [{**{a: v for a, v in g.items() if a not in ("turns", "conversations")}, "conversations": t}
                   for t in g["turns"]]
        res = {}
        for name, batch in (("grouped", coll([g])), ("one-region samples", coll(singles))):
            def step():
                model(batch)["loss"].backward()
                model.zero_grad()
            step()
            _, s = timed(lambda: [step() for _ in range(reps)])
            res[name] = k * reps / s
        out[k] = res
    return out


def batching(model, tok, cfg, proc, node, images, repeats=2):
    """Padding waste and training regions/s (forward + backward + AdamW, one whole epoch of the synthetic set:
    ``group_by_length`` puts its longest batch first, so a part of an epoch would not be representative) through
    the data module, with ``data.group_by_length`` and ``data.pack`` off/on. Each setting's epoch is timed
    ``repeats`` times, interleaved with the others, and the fastest kept (the machine is shared)."""
    from regionvlm.data.datamodule import RegionDataModule

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    settings = {(g, p): f"group_by_length {'on' if g else 'off'}, pack {'on' if p else 'off'}"
                for g in (False, True) for p in (False, True)}
    epochs, out = {}, {}
    for g, p in settings:
        dm = RegionDataModule(proc, train=[node], batch_size=images, num_workers=0, group_by_length=g, pack=p,
                              seed=0)
        epochs[g, p] = list(dm.train_dataloader())

    def step(b):
        model(b)["loss"].backward()
        opt.step()
        opt.zero_grad()
    step(epochs[False, False][0])  # warm-up (optimizer state)
    seconds = {k: float("inf") for k in settings}
    for _ in range(repeats):
        for k, batches in epochs.items():
            _, s = timed(lambda: [step(b) for b in batches])
            seconds[k] = min(seconds[k], s)
    for k, batches in epochs.items():
        real = sum(int(b.attention_mask.sum()) for b in batches)
        slots = sum(b.attention_mask.numel() for b in batches)
        regions = sum(len(b.region_mentions) for b in batches)
        out[settings[k]] = {"padding waste": 1 - real / slots, "regions/s": regions / seconds[k],
                            "rows": sum(len(b.input_ids) for b in batches), "token slots": slots,
                            "epoch s": seconds[k]}
    return out


def inference(model, tok, proc, samples, gen_tokens=32):
    coll = Collator(tok, model.num_image_tokens, model.tokens_per_region, for_generation=True)
    model.eval()
    out = {}
    with torch.no_grad():
        for bs in (1, 16):
            batches = [coll(samples[i: i + bs]) for i in range(0, 16, bs)]
            _, s = timed(lambda: [model.generate(b, max_new_tokens=8) for b in batches])
            out[f"regions/s batch {bs}"] = 16 / s
        b = coll(samples[:1])
        _, fwd = timed(lambda: model(b))
        _, gen = timed(lambda: model.generate(b, max_new_tokens=gen_tokens, min_new_tokens=gen_tokens))
        out["prompt forward s"] = fwd
        out[f"generate {gen_tokens} tokens s"] = gen
    model.train()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--images", type=int, default=16, help="images per training batch (grouped samples)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="train_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg, model, tok, proc, coll = tiny()
    result: dict = {"threads": args.threads, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(tmp, args.images * (args.steps + 2), 0, seed=0)
        node = {"type": "coco_instances", "ann_file": f"{tmp}/annotations/instances_train.json",
                "image_root": f"{tmp}/images", "prompt": {"type": "region_classification"}}
        grouped = ProcessedDataset(DATASETS.build({**node, "regions_per_sample": "all"}), proc)
        single = ProcessedDataset(DATASETS.build(node), proc)
        t = time.perf_counter()
        batches = [coll([grouped[i * args.images + j] for j in range(args.images)]) for i in range(args.steps + 1)]
        result["data wait s/step (1 process)"] = (time.perf_counter() - t) / len(batches)
        regions = sum(len(b.region_mentions) for b in batches[1:])
        tokens = sum(int(b.attention_mask.sum()) for b in batches[1:])
        result["breakdown s/step"] = breakdown(model, batches)
        result["padding waste"] = 1 - tokens / sum(b.attention_mask.numel() for b in batches[1:])
        bare = bare_loop(model, batches[1:])
        fw = framework(cfg, model, tok, batches[1:])
        result["bare loop regions/s"], result["framework regions/s"] = regions / bare, regions / fw
        result["framework / bare"] = bare / fw
        result["tokens/s (bare)"] = tokens / bare
        result["regions per image"] = regions_per_image(model, tok, proc, (1, 4, 16, 64), reps=2)
        result["batching"] = batching(model, tok, cfg, proc, {**node, "regions_per_sample": "all"}, args.images)
        result["inference"] = inference(model, tok, proc, [single[i] for i in range(16)])
    print(f"tiny preset, {args.threads} thread(s), {args.images} images per step, {args.steps} steps")
    print(f"  data wait (collate, 1 process)   {result['data wait s/step (1 process)'] * 1e3:9.1f} ms/step")
    for k, v in result["breakdown s/step"].items():
        print(f"  {k:<33}{v * 1e3:9.1f} ms/step")
    print(f"  padding waste                    {result['padding waste']:9.1%}")
    print(f"  regions/s bare loop {result['bare loop regions/s']:.1f}, framework {result['framework regions/s']:.1f}"
          f" (ratio {result['framework / bare']:.2f}, target ≥ 0.9); tokens/s {result['tokens/s (bare)']:.0f}")
    print("  regions per image   grouped regions/s   one-region samples regions/s")
    for k, v in result["regions per image"].items():
        print(f"  {k:>17}   {v['grouped']:17.1f}   {v['one-region samples']:28.1f}")
    print("  batching (one epoch)                          padding waste   regions/s   rows   token slots")
    for k, v in result["batching"].items():
        print(f"  {k:<45}{v['padding waste']:13.1%}{v['regions/s']:12.1f}{v['rows']:7d}{v['token slots']:14d}")
    for k, v in result["inference"].items():
        print(f"  inference {k:<30}{v:9.3f}")
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
