"""Vectorised `mask_pool` vs a naive per-region loop at RGPT scale; prints both times and the ratio.

    python benchmarks/perf/region_pool_speed.py [--images 8] [--regions 20] [--grid 96] [--channels 1024]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

from regionvlm.registry import REGION_EXTRACTORS


def naive_mask_pool(features, masks, image_index):
    out = []
    for r in range(masks.shape[0]):  # the loop the vectorised version avoids
        m = F.adaptive_avg_pool2d(masks[r][None, None], features.shape[-2:])[0, 0]
        out.append((features[image_index[r]] * m).sum((1, 2)) / m.sum().clamp_min(1e-6))
    return torch.stack(out)[:, None]


def timed(fn, repeat):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--regions", type=int, default=20, help="regions per image")
    ap.add_argument("--grid", type=int, default=96, help="refined map side (24×24 × 4 for RGPT)")
    ap.add_argument("--channels", type=int, default=1024)
    ap.add_argument("--image-size", type=int, default=336)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    dev = torch.device(args.device)
    b, r, s = args.images, args.images * args.regions, args.image_size
    features = torch.randn(b, args.channels, args.grid, args.grid, device=dev)
    masks = (torch.rand(r, s, s, device=dev) > 0.7).float()
    boxes = torch.tensor([[0.0, 0.0, s, s]], device=dev).expand(r, 4).contiguous()
    image_index = torch.arange(b, device=dev).repeat_interleave(args.regions)
    ext = REGION_EXTRACTORS.build({"type": "mask_pool"}, in_channels=args.channels, image_size=s).to(dev)

    def sync(fn):
        def run():
            with torch.no_grad():
                out = fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return out
        return run

    vec = sync(lambda: ext(features, masks, boxes, image_index))
    loop = sync(lambda: naive_mask_pool(features, masks, image_index))
    err = (vec() - loop()).abs().max().item()
    t_vec, t_loop = timed(vec, args.repeat), timed(loop, args.repeat)
    print(f"mask_pool on {args.device}: {b} images × {args.regions} regions, "
          f"map {args.channels}×{args.grid}×{args.grid}, "
          f"masks {s}×{s}")
    print(f"  vectorised (one bmm): {t_vec * 1e3:9.2f} ms")
    print(f"  naive per-region loop: {t_loop * 1e3:9.2f} ms")
    print(f"  speed-up: {t_loop / t_vec:.1f}×   (max abs difference {err:.2e})")


if __name__ == "__main__":
    main()
