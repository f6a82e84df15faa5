"""`regionvlm serve` under load, built-in engine against vLLM: requests/s, generated tokens/s, p50/p95 latency
and time to first token at 1, 16 and 64 concurrent clients, both engines in one run.

    python benchmarks/perf/serve_speed.py [--model runs/rgpt-tiny-stage2/export] [--engines builtin vllm]
        [--clients 1 16 64] [--requests 64] [--max-tokens 32] [--image-size 256] [--json out.json]

Each engine is the real command (`regionvlm serve --port 0 [--engine vllm]`, 127.0.0.1) in a process of its own;
with vLLM, serve starts vLLM itself as a child from the export's llm/ folder (in .venv-vllm, `make vllm`).
Every request streams (``stream: true`` with ``include_usage``, as chat front ends ask): its time to first
token is the first content event, its latency the ``[DONE]`` event, its tokens the usage event's count. Each
request is a different random image with 1–3 boxes and a question naming them all, asked greedily. A level
with C clients sends max(C, --requests) requests, each client one after the other. The answers of the two
engines are compared (greedy: they should be the same).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np


def make_requests(n: int, size: int, max_tokens: int, seed: int = 0) -> list[bytes]:
    """``n`` streamed request bodies, each its own image and 1–3 boxes."""
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
        body = {"max_tokens": max_tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "regions": [{"box": b} for b in boxes],
                              "content": [{"type": "image_url", "image_url": {
                                  "url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}},
                                  {"type": "text", "text": text}]}]}
        out.append(json.dumps(body).encode())
    return out


def ask(url: str, body: bytes) -> dict:
    """One streamed request: its answer, tokens, time to first token and latency (seconds)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=900)
    start = time.perf_counter()
    first, text, tokens = None, [], 0
    try:
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
        for line in resp:
            if not line.startswith(b"data: "):
                continue
            payload = line[6:].strip()
            if payload == b"[DONE]":
                break
            event = json.loads(payload)
            if "error" in event:
                raise RuntimeError(f"error event: {event['error']}")
            for choice in event.get("choices") or []:
                piece = choice["delta"].get("content")
                if piece:
                    first = first or time.perf_counter() - start
                    text.append(piece)
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    finally:
        conn.close()
    return {"answer": "".join(text), "tokens": tokens, "ttft": first if first is not None else float("nan"),
            "latency": time.perf_counter() - start}


def level(url: str, bodies: list[bytes], clients: int) -> dict:
    per_client = [bodies[c::clients] for c in range(clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(lambda mine: [ask(url, b) for b in mine], per_client))
    wall = time.perf_counter() - start
    results = [None] * len(bodies)
    for c, mine in enumerate(done):
        for j, r in enumerate(mine):
            results[c + j * clients] = r
    lat = np.array([r["latency"] for r in results])
    ttft = np.array([r["ttft"] for r in results])
    tokens = sum(r["tokens"] for r in results)
    return {"clients": clients, "requests": len(bodies), "wall_s": wall, "req_per_s": len(bodies) / wall,
            "tok_per_s": tokens / wall, "tokens": tokens, "p50_s": float(np.percentile(lat, 50)),
            "p95_s": float(np.percentile(lat, 95)), "ttft_p50_s": float(np.nanpercentile(ttft, 50)),
            "ttft_p95_s": float(np.nanpercentile(ttft, 95)), "answers": [r["answer"] for r in results]}


def start_server(args: argparse.Namespace, engine: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "regionvlm", "serve", "--model", args.model, "--port", "0",
           "--max-in-flight", str(max(64, *args.clients) * 2), "--max-tokens-limit", str(args.max_tokens)]
    cmd += ["--device", args.device] if args.device else []
    if engine == "vllm":
        cmd += ["--engine", "vllm", "--vllm-kv-cache-gib", str(args.vllm_kv_cache_gib)]
        cmd += ["--vllm-python", args.vllm_python] if args.vllm_python else []
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = proc.stdout.readline()  # "serving 'NAME' at http://127.0.0.1:PORT/ ... with ENGINE; Ctrl-C stops"
    if " at http://" not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {' '.join(cmd)}")
    return proc, line.split(" at ", 1)[1].split("/ ", 1)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/rgpt-tiny-stage2/export", help="export folder ('make demo' makes it)")
    ap.add_argument("--engines", nargs="+", default=["builtin", "vllm"], choices=("builtin", "vllm"))
    ap.add_argument("--clients", nargs="+", type=int, default=[1, 16, 64])
    ap.add_argument("--requests", type=int, default=64, help="requests per level (at least one per client)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--device", default=None)
    ap.add_argument("--vllm-python", default=None, help="default: .venv-vllm (make vllm)")
    ap.add_argument("--vllm-kv-cache-gib", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    if not Path(args.model).is_dir():
        raise SystemExit(f"--model: no export at {args.model} (make demo)")
    bodies = make_requests(max(args.requests, *args.clients), args.image_size, args.max_tokens)
    figures: dict[str, list[dict]] = {}
    for engine in args.engines:
        proc, url = start_server(args, engine)
        try:
            for body in bodies[:2]:  # warm-up: first-call allocations, lazy imports, vLLM's first batch
                ask(url, body)
            figures[engine] = [level(url, bodies[:max(args.requests, c)], c) for c in args.clients]
        finally:
            proc.terminate()
            proc.wait(120)
    print(f"model {args.model}; {args.max_tokens} new tokens at most per request, greedy, streamed; "
          f"{os.cpu_count()} CPU cores")
    print(f"{'engine':8} {'clients':>7} {'requests':>8} {'req/s':>7} {'tok/s':>8} {'p50 s':>7} {'p95 s':>7} "
          f"{'TTFT p50':>9} {'TTFT p95':>9}")
    for engine, rows in figures.items():
        for r in rows:
            print(f"{engine:8} {r['clients']:7d} {r['requests']:8d} {r['req_per_s']:7.2f} {r['tok_per_s']:8.1f} "
                  f"{r['p50_s']:7.2f} {r['p95_s']:7.2f} {r['ttft_p50_s']:9.2f} {r['ttft_p95_s']:9.2f}")
    if {"builtin", "vllm"} <= set(figures):
        for b, v in zip(figures["builtin"], figures["vllm"]):
            same = sum(x == y for x, y in zip(b["answers"], v["answers"]))
            print(f"{b['clients']:2d} clients: vLLM/builtin tokens/s {v['tok_per_s'] / b['tok_per_s']:.2f}×, "
                  f"TTFT p50 {v['ttft_p50_s'] / b['ttft_p50_s']:.2f}×; identical answers {same}/{len(b['answers'])}")
    if args.json:
        out = Path(args.json)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps({"model": args.model, "max_tokens": args.max_tokens, "figures": {
            e: [{k: v for k, v in r.items() if k != "answers"} for r in rows] for e, rows in figures.items()}},
            indent=1) + "\n")
        tmp.replace(out)


if __name__ == "__main__":
    main()
