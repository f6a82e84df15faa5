"""`regionvlm serve` under hostile load: valid clients' latency with and without hostile ones beside them.

    python benchmarks/perf/serve_hostile.py [--model EXPORT] [--seconds 15] [--valid 48] [--hostile 16] [--json F]

The real server (`regionvlm serve --port 0`, loopback) on an export (default: a tiny random one made here).
Phase A: ``--valid`` clients ask valid region questions in a loop for ``--seconds``. Phase B: the same, plus
``--hostile`` clients cycling through the attacks of issue 23 for as long again: a ~100-byte 100000×1 PNG
(padded, it would be 40 GB), a 40 MB question (over the body limit), 30 masks of a 3000×3000 image
(270 Mpx), a 5000-digit integer, a 10**400 box,
a lone surrogate, a cross-origin text/plain POST, ``Content-Length: ²``, Transfer-Encoding with Content-Length,
an unauthenticated 30 MB upload, and clients that send half a request and leave. Reported: every status seen
per kind, the count of 5xx (goal 0), whether the server survived, valid p50/p95 latency in A and B (goal: B's
p95 within 2× of A's), the server's peak memory (VmHWM).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

KEY = "bench-key"
ROOT = Path(__file__).resolve().parents[2]


def png(array: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def body(picture: str, regions: list, text: str, **extra) -> bytes:
    return json.dumps({"max_tokens": 8, "temperature": 0, **extra, "messages": [{
        "role": "user", "regions": regions, "content": [{"type": "image_url", "image_url": {"url": picture}},
                                                        {"type": "text", "text": text}]}]}).encode()


def http(port: int, payload: bytes, content_type: str = "application/json", key: str | None = KEY,
         extra: str = "", length: str | None = None, send_all: bool = True, timeout: float = 60.0) -> str:
    """One request on a raw socket; the reply's status code, or what happened instead."""
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length or len(payload)}\r\n{extra}" + (f"Authorization: Bearer {key}\r\n" if key else "")
            + "Connection: close\r\n\r\n").encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            try:
                sock.sendall(head + (payload if send_all else payload[: len(payload) // 2]))
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused before the whole body was sent: its answer is waiting
            if not send_all:
                return "left"  # half a body, then gone
            reply = sock.recv(64)
            return reply.split(b" ", 2)[1].decode() if reply.startswith(b"HTTP/1.1 ") else "closed"
    except (TimeoutError, socket.timeout):
        return "timeout"
    except OSError as exc:
        return type(exc).__name__


def hostile_kinds(port: int) -> dict:
    from PIL import Image

    small = png((np.random.RandomState(0).rand(48, 64, 3) * 255).astype(np.uint8))
    buf = io.BytesIO()
    Image.new("L", (100000, 1)).save(buf, format="PNG")
    line = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    big = png(np.zeros((3000, 3000, 3), np.uint8))  # 9 Mpx, a few KB as PNG
    mask = png(np.full((3000, 3000), 255, np.uint8))
    good = body(small, [{"box": [1, 1, 20, 20]}], "What is <region1>?")
    # every body is made once, here: the clients run on the same cores as the server and must cost it nothing
    line_png, question = body(line, [], "What is this?"), body(small, [], "What? " + "word " * 8_000_000)
    flood = body(big, [{"mask": mask}] * 30, "What is <region1>?")
    huge_int = good.replace(b'"max_tokens"', b'"n": ' + b"9" * 5000 + b', "max_tokens"')
    huge_box = body(small, [{"box": [1, 1, 10 ** 400, 20]}], "What is <region1>?")
    surrogate = good.replace(b"What is", b"What\\ud800 is")
    return {
        "100000x1 png": lambda: http(port, line_png),
        "40 MB question": lambda: http(port, question),
        "30 masks of 9 Mpx": lambda: http(port, flood),
        "5000-digit int": lambda: http(port, huge_int),
        "10**400 box": lambda: http(port, huge_box),
        "lone surrogate": lambda: http(port, surrogate),
        "text/plain POST": lambda: http(port, good, content_type="text/plain"),
        "Content-Length: ²": lambda: http(port, good, length="²"),
        "TE + CL": lambda: http(port, good, extra="Transfer-Encoding: chunked\r\n"),
        "no key, 30 MB": lambda: http(port, b"", key=None, length=str(30 << 20)),
        "half a body, gone": lambda: http(port, good, send_all=False),
    }


def make_export(out: Path) -> Path:
    """A tiny export with random weights scaled so that answers differ (as tests/test_serve_api.py makes)."""
    import torch
    from omegaconf import OmegaConf

    from regionvlm.card import save_export
    from regionvlm.config import load_config
    from regionvlm.engine.build import build_model_and_tokenizer

    cfg = OmegaConf.to_container(load_config(ROOT / "projects/rgpt/tiny/base.yaml"), resolve=True)
    torch.manual_seed(0)
    model, tokenizer, _ = build_model_and_tokenizer(cfg["model"])
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 1.5 / p.shape[-1] ** 0.5)
    return save_export(out, model, tokenizer, cfg)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="export folder (default: a tiny random one)")
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    ap.add_argument("--valid", type=int, default=48)
    ap.add_argument("--hostile", type=int, default=16)
    ap.add_argument("--kinds", default=None, help="comma-separated hostile kinds (default: all)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    model = args.model or str(make_export(Path(tempfile.mkdtemp(prefix="hostile-")) / "export"))
    proc = subprocess.Popen([sys.executable, "-m", "regionvlm", "serve", "--model", model, "--port", "0",
                             "--device", "cpu", "--max-in-flight", "256"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "REGIONVLM_API_KEY": KEY})
    line = proc.stdout.readline()
    if " at http://127.0.0.1:" not in line:
        print("error: the server did not start", file=sys.stderr)
        return 2
    port = int(line.split("127.0.0.1:", 1)[1].split("/", 1)[0])
    rng = np.random.RandomState(1)
    valid = [body(png((rng.rand(48, 64, 3) * 255).astype(np.uint8)), [{"box": [1, 1, 20 + i % 30, 30]}],
                  "What is <region1>?") for i in range(32)]
    kinds = hostile_kinds(port)
    if args.kinds:
        kinds = {k: v for k, v in kinds.items() if k in args.kinds.split(",")}
    statuses: dict[str, Counter] = {"valid": Counter(), **{k: Counter() for k in kinds}}
    lock = threading.Lock()

    def run_phase(hostile: int) -> list[float]:
        stop_at, latencies = time.monotonic() + args.seconds, []

        def good_client(i: int) -> None:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                status = http(port, valid[i % len(valid)])
                with lock:
                    statuses["valid"][status] += 1
                    if status == "200":
                        latencies.append(time.perf_counter() - t0)
                i += 1

        def bad_client(i: int) -> None:
            names = list(kinds)
            while time.monotonic() < stop_at:
                name = names[i % len(names)]
                status = kinds[name]()
                with lock:
                    statuses[name][status] += 1
                i += 1

        threads = [threading.Thread(target=good_client, args=(i,)) for i in range(args.valid)]
        threads += [threading.Thread(target=bad_client, args=(i,)) for i in range(hostile)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return latencies

    try:
        a = run_phase(0)
        b = run_phase(args.hostile)
        alive = proc.poll() is None and http(port, valid[0]) == "200"
        peak_mb = int(next(row.split()[1] for row in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                           if row.startswith("VmHWM"))) / 1024 if proc.poll() is None else float("nan")
    finally:
        proc.terminate()
        proc.wait(60)
    five = sum(n for c in statuses.values() for s, n in c.items() if s.startswith("5"))
    pa, pb = (np.percentile(x, [50, 95]) if x else (float("nan"),) * 2 for x in (a, b))
    print(f"{args.valid} valid clients, {args.seconds:g} s alone, then {args.seconds:g} s beside {args.hostile} "
          f"hostile ones; {os.cpu_count()} CPU cores")
    for name, counts in statuses.items():
        print(f"  {name:20} {dict(counts)}")
    print(f"5xx answers: {five}; server alive after: {alive}; peak memory (VmHWM): {peak_mb:.0f} MB")
    print(f"valid p50/p95 alone: {pa[0]:.2f}/{pa[1]:.2f} s ({len(a)} answers); beside hostile: "
          f"{pb[0]:.2f}/{pb[1]:.2f} s ({len(b)} answers); p95 ratio {pb[1] / pa[1]:.2f}")
    if args.json:
        out = Path(args.json)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps({"statuses": {k: dict(v) for k, v in statuses.items()}, "five_xx": five,
                                   "alive": alive, "peak_mb": peak_mb, "p95_alone_s": pa[1],
                                   "p95_hostile_s": pb[1]}, indent=1) + "\n")
        tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
