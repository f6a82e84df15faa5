"""Loader throughput on the synthetic set: samples/s of DataLoader + ImageProcessor + Collator, 0 and 2 workers.

Compare with the tiny preset's training samples/s (steps/s × batch size): the loader must not be the bottleneck.
Usage: python benchmarks/perf/loader_speed.py [--n 400] [--batch-size 32] [--image-size 128]
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
from regionvlm.data.synth import write_synthetic
from regionvlm.registry import DATASETS

TOKENIZER = Path(__file__).resolve().parents[2] / "projects/rgpt/tiny/tokenizer"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="synthetic training images")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2, help="passes over the data per measurement")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_synthetic(tmp, args.n, 0, seed=0)
        print(f"synth: {args.n} images in {time.perf_counter() - t0:.2f} s")
        tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
        ds = DATASETS.build({"type": "coco_instances", "ann_file": f"{tmp}/annotations/instances_train.json",
                             "image_root": f"{tmp}/images"})
        data = ProcessedDataset(ds, ImageProcessor(args.image_size))
        collator = Collator(tok, num_image_tokens=64, tokens_per_region=1, template="plain", max_length=256)
        for workers in (0, 2):
            loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                                collate_fn=collator)
            n, t0 = 0, time.perf_counter()
            for _ in range(args.epochs):
                for batch in loader:
                    n += len(batch)
            dt = time.perf_counter() - t0
            print(f"workers={workers}: {n / dt:8.1f} samples/s  ({n / dt / args.batch_size:.1f} batches/s of "
                  f"{args.batch_size}; {len(ds)} region samples)")


if __name__ == "__main__":
    main()
