"""Loader throughput on the synthetic set (DataLoader + ImageProcessor + Collator, 0 and 2 workers) against the
tiny preset's training throughput (forward + backward + AdamW step of the tiny RGPT, all parts training), in
one run: the loader must not be the bottleneck.
Usage: python benchmarks/perf/loader_speed.py [--n 400] [--batch-size 32] [--steps 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from regionvlm.data.collate import Collator
from regionvlm.data.datamodule import ProcessedDataset
from regionvlm.data.processing import ImageProcessor
from regionvlm.data.synth.writers import write_synthetic
from regionvlm.registry import DATASETS

TOKENIZER = Path(__file__).resolve().parents[2] / "projects/rgpt/tiny/tokenizer"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="synthetic training images")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2, help="passes over the data per measurement")
    ap.add_argument("--steps", type=int, default=10, help="training steps to time")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_synthetic(tmp, args.n, 0, seed=0)
        print(f"synth: {args.n} images in {time.perf_counter() - t0:.2f} s")
        tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
        ds = DATASETS.build({"type": "coco_instances", "ann_file": f"{tmp}/annotations/instances_train.json",
                             "image_root": f"{tmp}/images"})
        data = ProcessedDataset(ds, ImageProcessor(args.image_size))
        model = tiny_model(tok)
        collator = Collator(tok, model.num_image_tokens, model.tokens_per_region, template="vicuna_v1",
                            max_length=256)
        loader_rates = []
        for workers in (0, 2):
            loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                                collate_fn=collator)
            n, t0 = 0, time.perf_counter()
            for _ in range(args.epochs):
                for batch in loader:
                    n += len(batch)
            dt = time.perf_counter() - t0
            loader_rates.append(n / dt)
            print(f"loader, workers={workers}: {n / dt:8.1f} samples/s  ({n / dt / args.batch_size:.1f} batches/s of "
                  f"{args.batch_size}; {len(ds)} region samples)")
        batches = [b for b, _ in zip(DataLoader(data, batch_size=args.batch_size, shuffle=True, collate_fn=collator),
                                     range(args.steps + 2))]
        train_rate = training_rate(model, batches)
        print(f"training (tiny RGPT, batch {args.batch_size}): {train_rate:8.1f} samples/s "
              f"({train_rate / args.batch_size:.2f} steps/s)")
        print(f"loader / training: {max(loader_rates) / train_rate:.1f}x (the loader must stay above 1x)")


def tiny_model(tokenizer):
    """The tiny preset's model (projects/rgpt/tiny/base.yaml), random init, every part training."""
    from omegaconf import OmegaConf

    from regionvlm.config import load_config
    from regionvlm.model import build_model

    cfg = load_config(TOKENIZER.parent / "base.yaml")
    return build_model(OmegaConf.to_container(cfg.model, resolve=True), tokenizer).train()


def training_rate(model, batches) -> float:
    """Samples/s of forward + backward + AdamW step, after two warm-up steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    n, t0 = 0, 0.0
    for i, batch in enumerate(batches):
        if i == 2:
            n, t0 = 0, time.perf_counter()
        model(batch)["loss"].backward()
        opt.step()
        opt.zero_grad()
        n += len(batch)
    return n / (time.perf_counter() - t0)


if __name__ == "__main__":
    main()
