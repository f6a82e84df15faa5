"""`regionvlm serve` throughput: regions/s for concurrent clients (dynamic batching) vs. the same requests sent
one by one; prints both figures and the ratio (target ≥ 3× with 16 clients).

    python benchmarks/perf/serve_speed.py [--model runs/rgpt-tiny-stage2/export] [--clients 16]
        [--requests-per-client 4] [--device cpu|cuda] [--max-batch-size 16] [--batch-wait-ms 10]

The server runs in this process on 127.0.0.1 (a free port) and is reached over HTTP, so both figures include
request parsing, image decoding and JSON. Each request is a different random image with 1–3 boxes and a
question naming them all; every request asks for the same number of new tokens.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def make_requests(n: int, size: int, max_tokens: int, seed: int = 0) -> list[tuple[bytes, int]]:
    """``n`` request bodies and each one's region count."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray((rng.rand(size, size, 3) * 255).astype(np.uint8)).save(buf, format="PNG")
        k = 1 + i % 3
        boxes = []
        for _ in range(k):
            x1, y1 = rng.randint(0, size // 2, 2)
            boxes.append([int(x1), int(y1), int(x1 + rng.randint(8, size // 2)), int(y1 + rng.randint(8, size // 2))])
        text = "What is " + " and ".join(f"<region{j + 1}>" for j in range(k)) + "?"
        body = {"max_tokens": max_tokens, "temperature": 0, "messages": [{
            "role": "user", "regions": [{"box": b} for b in boxes],
            "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                            + base64.b64encode(buf.getvalue()).decode()}},
                        {"type": "text", "text": text}]}]}
        out.append((json.dumps(body).encode(), k))
    return out


def post(url: str, body: bytes) -> str:
    req = urllib.request.Request(url + "/v1/chat/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())["choices"][0]["message"]["content"]


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=60) as resp:
        return json.loads(resp.read())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/rgpt-tiny-stage2/export",
                    help="export folder ('make demo' makes this one)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--batch-wait-ms", type=float, default=10.0)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)

    from regionvlm.inference import RegionChat
    from regionvlm.serve.app import RegionChatServer

    chat = RegionChat.from_pretrained(args.model, device=args.device)
    server = RegionChatServer(("127.0.0.1", 0), chat, "bench", max_batch_size=args.max_batch_size,
                              batch_wait_ms=args.batch_wait_ms, max_in_flight=max(64, args.clients))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        n = args.clients * args.requests_per_client
        requests = make_requests(n, args.image_size, args.max_tokens)
        regions = sum(k for _, k in requests)
        for body, _ in requests[:2]:  # warm-up: first-call allocations, lazy imports
            post(server.url, body)

        start = time.perf_counter()
        alone = [post(server.url, body) for body, _ in requests]
        t_alone = time.perf_counter() - start

        before = health(server.url)
        per_client = [requests[c::args.clients] for c in range(args.clients)]
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            answers = list(pool.map(lambda mine: [post(server.url, body) for body, _ in mine], per_client))
        t_batched = time.perf_counter() - start
        after = health(server.url)
    finally:
        server.close()

    batched = [None] * n
    for c, mine in enumerate(answers):
        for j, answer in enumerate(mine):
            batched[c + j * args.clients] = answer
    batches = after["batches"] - before["batches"]
    import torch

    print(f"model {args.model} on {chat.device} ({torch.get_num_threads()} torch threads); {n} requests, "
          f"{regions} regions, {args.max_tokens} new tokens each")
    print(f"one by one        : {t_alone:7.2f} s  {regions / t_alone:8.1f} regions/s")
    print(f"{args.clients:2d} concurrent     : {t_batched:7.2f} s  {regions / t_batched:8.1f} regions/s  "
          f"({batches} batches, mean {n / max(batches, 1):.1f} requests, largest {after['largest_batch']})")
    print(f"speed-up          : {t_alone / t_batched:.2f}×   answers identical: {batched == alone}")


if __name__ == "__main__":
    main()
