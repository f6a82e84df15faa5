"""`regionvlm serve` throughput: regions/s for concurrent clients (dynamic batching) vs. the same requests sent
one by one; prints both figures and the ratio (target ≥ 3× with 16 clients).

    python benchmarks/perf/serve_speed.py [--model runs/rgpt-tiny-stage2/export] [--clients 16]
        [--requests-per-client 4] [--device cpu|cuda] [--max-batch-size 16] [--batch-wait-ms 10]

The server is the real command (`regionvlm serve --port 0`, 127.0.0.1) in its own process, reached over HTTP,
so both figures include request parsing, image decoding and JSON. Each request is a different random image
with 1–3 boxes and a question naming them all; every request asks for the same number of new tokens.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import subprocess
import sys
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
    ap.add_argument("--torch-threads", type=int, default=None, help="the server's torch threads (OMP_NUM_THREADS)")
    args = ap.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if args.torch_threads:
        env["OMP_NUM_THREADS"] = str(args.torch_threads)
    cmd = [sys.executable, "-m", "regionvlm.cli", "serve", "--model", args.model, "--port", "0",
           "--max-batch-size", str(args.max_batch_size), "--batch-wait-ms", str(args.batch_wait_ms),
           "--max-in-flight", str(max(64, args.clients))] + (["--device", args.device] if args.device else [])
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = server.stdout.readline()  # "serving 'NAME' at http://127.0.0.1:PORT/ ..."
        if " at http://" not in line:
            raise SystemExit(f"the server did not start: {' '.join(cmd)}")
        url = line.split(" at ", 1)[1].split("/ ", 1)[0]
        n = args.clients * args.requests_per_client
        requests = make_requests(n, args.image_size, args.max_tokens)
        regions = sum(k for _, k in requests)
        for body, _ in requests[:2]:  # warm-up: first-call allocations, lazy imports
            post(url, body)

        start = time.perf_counter()
        alone = [post(url, body) for body, _ in requests]
        t_alone = time.perf_counter() - start

        before = health(url)
        per_client = [requests[c::args.clients] for c in range(args.clients)]
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            answers = list(pool.map(lambda mine: [post(url, body) for body, _ in mine], per_client))
        t_batched = time.perf_counter() - start
        after = health(url)
    finally:
        server.terminate()
        server.wait(60)

    batched = [None] * n
    for c, mine in enumerate(answers):
        for j, answer in enumerate(mine):
            batched[c + j * args.clients] = answer
    batches = after["batches"] - before["batches"]
    threads = f"{args.torch_threads} torch threads" if args.torch_threads else "torch's default threads"
    print(f"model {args.model} on {args.device or 'the default device'} ({threads}); {n} requests, "
          f"{regions} regions, {args.max_tokens} new tokens each")
    print(f"one by one        : {t_alone:7.2f} s  {regions / t_alone:8.1f} regions/s")
    print(f"{args.clients:2d} concurrent     : {t_batched:7.2f} s  {regions / t_batched:8.1f} regions/s  "
          f"({batches} batches, mean {n / max(batches, 1):.1f} requests, largest {after['largest_batch']})")
    print(f"speed-up          : {t_alone / t_batched:.2f}×   answers identical: {batched == alone}")


if __name__ == "__main__":
    main()
