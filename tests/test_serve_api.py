"""`regionvlm serve`'s HTTP API, through a real HTTP client (urllib) against servers started here on 127.0.0.1.

The model is a tiny random export (the tiny preset's architecture, weights re-drawn at a larger scale so that
different images and regions give different answers): answers are compared with `RegionChat` asked directly.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
KEY = "test-key"
TIMEOUT = 60  # seconds: every request here is bounded


def random_export(out_dir: Path) -> Path:
    """A tiny export whose greedy answers depend on the image and regions (a from-scratch init answers the same
    token whatever it sees)."""
    import torch
    from omegaconf import OmegaConf

    from regionvlm.card import save_export
    from regionvlm.config import load_config
    from regionvlm.engine.build import build_model_and_tokenizer

    cfg = OmegaConf.to_container(load_config(ROOT / "projects/rgpt/tiny/base.yaml"), resolve=True)
    cfg["generation"]["max_new_tokens"] = 6
    torch.manual_seed(0)
    model, tokenizer, _ = build_model_and_tokenizer(cfg["model"])
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 1.5 / p.shape[-1] ** 0.5)
    return save_export(out_dir, model, tokenizer, cfg)


def png_url(array: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    return (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)


def request_body(picture: np.ndarray, regions: list, text: str, **extra) -> dict:
    return {"messages": [{"role": "user", "regions": regions,
                          "content": [{"type": "image_url", "image_url": {"url": png_url(picture)}},
                                      {"type": "text", "text": text}]}], **extra}


def call(url: str, path: str, body: dict | bytes | None = None, key: str | None = KEY) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method="GET" if data is None else "POST")
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def start(chat, **kwargs):
    from regionvlm.serve.app import RegionChatServer
    from regionvlm.serve.validation import Limits

    kwargs.setdefault("limits", Limits(max_image_pixels=100 * 100, max_new_tokens=32))
    server = RegionChatServer(("127.0.0.1", 0), chat, "tiny", **kwargs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return random_export(tmp_path_factory.mktemp("serve") / "export")


@pytest.fixture(scope="module")
def chat(export):
    from regionvlm.inference import RegionChat

    return RegionChat.from_pretrained(export, device="cpu")


@pytest.fixture(scope="module")
def server(chat):
    server = start(chat, api_key=KEY, batch_wait_ms=200)
    yield server
    server.close()


# -- happy path --------------------------------------------------------------------------------------------
def test_answer_equals_regionchat_and_has_the_openai_shape(server, chat):
    picture, regions = image(0), [[2, 3, 30, 40], [10, 10, 60, 45]]
    status, out = call(server.url, "/v1/chat/completions",
                       request_body(picture, [{"box": r} for r in regions], "What is <region2> next to <region1>?",
                                    model="tiny"))
    assert status == 200, out
    expected = chat.ask(picture, regions, "What is <region2> next to <region1>?")
    assert out["choices"][0]["message"] == {"role": "assistant", "content": expected}
    assert out["object"] == "chat.completion" and out["model"] == "tiny" and out["id"].startswith("chatcmpl-")
    assert isinstance(out["created"], int)
    sample = chat.sample(picture, regions, "What is <region2> next to <region1>?")
    ids = chat.generate_ids([sample])[0]  # the generated tokens, the end token included
    prompt = chat.processor.prompt_length(sample["conversations"], 2)  # as the model reads it: template and all
    assert out["usage"] == {"prompt_tokens": prompt, "completion_tokens": len(ids), "total_tokens": prompt + len(ids)}
    assert out["choices"][0]["finish_reason"] == ("stop" if ids[-1] == chat.tokenizer.eos_token_id else "length")


def sse_events(url: str, body: dict, key: str | None = KEY) -> tuple[int, str, list]:
    """Status, content type and the events of a streamed answer (``data: ...`` payloads, JSON-decoded but for
    ``[DONE]``), read as a plain HTTP client reads them."""
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
        raw = resp.read().decode()
        kind = resp.headers["Content-Type"]
    events = [line[6:] for line in raw.split("\n\n") if line.startswith("data: ")]
    return resp.status, kind, [e if e == "[DONE]" else json.loads(e) for e in events]


def test_a_streamed_answer_adds_up_to_the_answer(server, chat):
    picture, regions = image(2), [[2, 3, 30, 40]]
    text = "What is <region1>?"
    status, kind, events = sse_events(server.url, request_body(picture, [{"box": regions[0]}], text, stream=True,
                                                               stream_options={"include_usage": True}))
    assert status == 200 and kind == "text/event-stream" and events[-1] == "[DONE]"
    chunks, usage = events[:-2], events[-2]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks + [usage])
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks]
    assert "".join(pieces) == chat.ask(picture, regions, text) and len([p for p in pieces if p]) >= 2
    finish = [c["choices"][0]["finish_reason"] for c in chunks]
    assert finish[:-1] == [None] * (len(chunks) - 1) and finish[-1] in ("stop", "length")
    ids = chat.generate_ids([chat.sample(picture, regions, text)])[0]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(ids)
    assert call(server.url, "/health")[1]["in_flight"] == 0


def test_concurrent_streams_share_generate_calls_and_equal_single_answers(server, chat):
    cases = sixteen_requests()
    alone = [chat.ask(picture, boxes, text) for picture, boxes, text in cases]
    bodies = [request_body(picture, [{"box": b} for b in boxes], text, stream=True) for picture, boxes, text in cases]
    before = call(server.url, "/health")[1]
    with ThreadPoolExecutor(16) as pool:
        streams = list(pool.map(lambda body: sse_events(server.url, body)[2], bodies))
    got = ["".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) for events in streams]
    assert got == alone
    after = call(server.url, "/health")[1]
    assert after["model_calls"] - before["model_calls"] <= 8, after  # batched, not one generate per stream


def test_the_openai_client_asks_and_streams(server, chat):
    """The official `openai` client, as a user's code calls it (its own HTTP stack, SSE parser and types)."""
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=TIMEOUT)
    picture, text = image(3), "Describe <region1>."
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_url(picture)}},
                                             {"type": "text", "text": text}],
                 "regions": [{"box": [4, 4, 40, 30]}]}]  # this API's extension field rides on the message
    expected = chat.ask(picture, [[4, 4, 40, 30]], text)
    out = client.chat.completions.create(model="tiny", messages=messages, temperature=0)
    assert out.choices[0].message.content == expected and out.usage.completion_tokens > 0
    stream = client.chat.completions.create(model="tiny", messages=messages, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected


def test_mask_region_and_max_tokens(server, chat):
    picture = image(1)
    mask = np.zeros(picture.shape[:2], dtype=bool)
    mask[5:30, 8:50] = True
    status, out = call(server.url, "/v1/chat/completions",
                       request_body(picture, [{"mask": png_url((mask * 255).astype(np.uint8))}],
                                    "Describe <region1>.", max_tokens=3, temperature=0))
    assert status == 200, out
    assert out["choices"][0]["message"]["content"] == chat.ask(picture, [mask], "Describe <region1>.",
                                                               max_new_tokens=3)


def test_models_health_and_page(server):
    status, models = call(server.url, "/v1/models")
    assert status == 200 and [m["id"] for m in models["data"]] == ["tiny"]
    status, health = call(server.url, "/health", key=None)
    assert status == 200 and health["status"] == "ok" and health["model"] == "tiny"
    status, cfg = call(server.url, "/ui/config", key=None)
    assert status == 200 and cfg["auth_required"] is True
    assert cfg["tasks"]["classify"].startswith("What category name best describes the region represented by <region1>?")
    assert set(cfg["tasks"]) == {"classify", "brief caption", "detailed caption"}
    with urllib.request.urlopen(server.url + "/", timeout=TIMEOUT) as resp:
        assert resp.headers["Content-Type"].startswith("text/html") and b"<canvas" in resp.read()


# -- bad requests: a clear 4xx each, and the server keeps answering -----------------------------------------
def bad_requests():
    good = image(2)
    ok_box = [{"box": [1, 1, 20, 20]}]

    def with_url(url):
        body = request_body(good, ok_box, "What is <region1>?")
        body["messages"][0]["content"][0]["image_url"]["url"] = url
        return body

    small_mask = png_url(np.full((10, 10), 255, np.uint8))
    return {
        "malformed JSON": (b'{"messages": [', 400, None, "not valid JSON"),
        "bad base64": (with_url("data:image/png;base64,@@@not-base64@@@"), 400,
                       "messages[0].content[0].image_url.url", "bad base64"),
        "not an image": (with_url("data:image/png;base64," + base64.b64encode(b"hello, world").decode()), 400,
                         "messages[0].content[0].image_url.url", "not a readable image"),
        "remote url": (with_url("http://example.com/cat.png"), 400, "messages[0].content[0].image_url.url",
                       "does not fetch"),
        "box out of bounds": (request_body(good, [{"box": [10, 10, 65, 30]}], "What is <region1>?"), 400,
                              "messages[0].regions[0].box", "out of the image's bounds"),
        "empty box": (request_body(good, [{"box": [10, 10, 10, 30]}], "What is <region1>?"), 400,
                      "messages[0].regions[0].box", "empty"),
        "region3 with two regions": (request_body(good, ok_box * 2, "Is <region3> left of <region1>?"), 400,
                                     "messages[0].content", "<region3> but the message has 2 region(s)"),
        "mask of another size": (request_body(good, [{"mask": small_mask}], "What is <region1>?"), 400,
                                 "messages[0].regions[0].mask", "mask is 10×10 but the image is 64×48"),
        "unknown region form": (request_body(good, [{"circle": [1, 2, 3]}], "What is <region1>?"), 400,
                                "messages[0].regions[0]", "a region is"),
        "oversized image": (request_body(image(3, 120, 100), [], "What is this?"), 413,
                            "messages[0].content[0].image_url.url", "at most 10000"),
        "missing image": ({"messages": [{"role": "user", "content": "What is <region1>?", "regions": ok_box}]},
                          400, "messages[0].content", "missing image"),
        "system turn": ({"messages": [{"role": "system", "content": "be brief"}]}, 400, "messages[0].role",
                        "only one user message"),
        "other model": (request_body(good, ok_box, "What is <region1>?", model="gpt-4o"), 404, "model",
                        "not served here"),
        "stream not a bool": (request_body(good, ok_box, "What is <region1>?", stream="yes"), 400, "stream",
                              "stream must be"),
        "stream_options without stream": (request_body(good, ok_box, "What is <region1>?",
                                                       stream_options={"include_usage": True}), 400,
                                          "stream_options", "with stream=true"),
        "max_tokens too large": (request_body(good, ok_box, "What is <region1>?", max_tokens=10_000), 400,
                                 "max_tokens", "max_tokens"),
    }


@pytest.mark.parametrize("case", list(bad_requests()))
def test_bad_request_gets_a_clear_4xx(server, case):
    body, status, param, message = bad_requests()[case]
    got, out = call(server.url, "/v1/chat/completions", body)
    assert got == status, out
    assert out["error"]["param"] == param and message in out["error"]["message"], out
    assert out["error"]["type"] == "invalid_request_error"


def test_api_key_routes_and_methods(server):
    body = request_body(image(2), [], "What is this?")
    for key in (None, "wrong-key"):
        status, out = call(server.url, "/v1/chat/completions", body, key=key)
        assert status == 401 and out["error"]["type"] == "authentication_error"
        assert call(server.url, "/v1/models", key=key)[0] == 401
    assert call(server.url, "/nowhere")[0] == 404
    assert call(server.url, "/health", b"{}")[0] == 405


def raw_exchange(url: str, request: bytes) -> bytes:
    """Bytes sent on a plain socket (for requests urllib will not make), the reply read until the server closes."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def test_missing_length_short_body_and_deep_json(server):
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: application/json\r\n")
    reply = raw_exchange(server.url, (head + "\r\n").encode())
    assert reply.startswith(b"HTTP/1.1 411") and b"Content-Length header is required" in reply
    reply = raw_exchange(server.url, (head + "Content-Length: 100\r\n\r\n{\"messages\"").encode())
    assert reply.startswith(b"HTTP/1.1 408") and b"ended after 11 of 100 bytes" in reply
    status, out = call(server.url, "/v1/chat/completions", b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and "not valid JSON" in out["error"]["message"]


def test_server_still_healthy_after_bad_requests(server):
    for body, *_ in bad_requests().values():
        call(server.url, "/v1/chat/completions", body)
    status, health = call(server.url, "/health")
    assert status == 200 and health["in_flight"] == 0 and health["queued"] == 0
    assert call(server.url, "/v1/chat/completions", request_body(image(4), [], "What is this?"))[0] == 200


# -- dynamic batching --------------------------------------------------------------------------------------
def sixteen_requests():
    out = []
    for i in range(16):
        h, w = 40 + 4 * (i % 5), 48 + 6 * (i % 3)
        boxes = [[1 + i % 7, 2, w - 3, h - 1 - i % 4]] + ([[0, 0, 10 + i, 12]] if i % 2 else [])
        text = "What is <region1>?" if i % 2 == 0 else f"Compare <region2> with <region1>, case {i}."
        out.append((image(100 + i, h, w), boxes, text))
    return out


def test_sixteen_concurrent_requests_are_batched_and_equal_single_answers(server, chat):
    cases = sixteen_requests()
    alone = [chat.ask(picture, boxes, text) for picture, boxes, text in cases]
    assert len(set(alone)) > 1, "the test model should answer different questions differently"
    before = call(server.url, "/health")[1]
    bodies = [request_body(picture, [{"box": b} for b in boxes], text) for picture, boxes, text in cases]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda body: call(server.url, "/v1/chat/completions", body), bodies))
    assert [status for status, _ in results] == [200] * 16
    assert [out["choices"][0]["message"]["content"] for _, out in results] == alone
    after = call(server.url, "/health")[1]
    assert after["requests"] - before["requests"] == 16
    assert after["batches"] - before["batches"] <= 8 and after["largest_batch"] >= 2, after
    # the same requests one by one through the server: batches of one, same answers
    single = [call(server.url, "/v1/chat/completions", body)[1]["choices"][0]["message"]["content"] for body in bodies]
    assert single == alone
    assert call(server.url, "/health")[1]["batches"] - after["batches"] == 16


def test_a_question_too_long_for_the_context_fails_alone(server, chat):
    long_text = "What is <region1>? " + "Please look very closely at every part of it. " * 60
    bodies = [request_body(image(7), [{"box": [1, 1, 20, 20]}], text) for text in
              ("What is <region1>?", long_text, "Describe <region1>.")]
    before = call(server.url, "/health")[1]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda body: call(server.url, "/v1/chat/completions", body), bodies))
    assert [status for status, _ in results] == [200, 400, 200]
    after = call(server.url, "/health")[1]  # refused before queuing: no generate call was retried
    assert after["model_calls"] - before["model_calls"] == after["batches"] - before["batches"], after
    assert results[1][1]["error"]["message"].endswith("does not fit the model's context (max_length=256)")
    assert results[2][1]["choices"][0]["message"]["content"] == chat.ask(image(7), [[1, 1, 20, 20]],
                                                                          "Describe <region1>.")


def test_one_failing_question_costs_a_batch_a_few_calls_not_one_per_question():
    """Bisection: 16 questions, one of which fails alone → 1 + 2·log2(16) = 9 calls (one by one: 17)."""
    from regionvlm.serve.batching import Batcher
    from regionvlm.serve.validation import Question

    sizes = []
    gate = threading.Event()

    def work(questions):
        assert gate.wait(TIMEOUT)
        sizes.append(len(questions))
        if any(q.prompt == "bad" for q in questions):
            raise RuntimeError("bad question")
        return [q.prompt.upper() for q in questions]

    batcher = Batcher(work, max_batch_size=16, batch_wait_s=5.0)
    try:
        futures = [batcher.submit(Question(None, [], "bad" if i == 11 else f"q{i}")) for i in range(16)]
        gate.set()
        results = [f.exception(TIMEOUT) or f.result() for f in futures]
    finally:
        batcher.stop()
    assert results[:11] + results[12:] == [f"Q{i}" for i in range(16) if i != 11]
    assert getattr(results[11], "status", None) == 500 and "bad question" in str(results[11])
    assert sorted(sizes, reverse=True) == [16, 8, 8, 4, 4, 2, 2, 1, 1]  # depth first


class FaultyChat:
    """A RegionChat with a bug that fires on one question."""

    def __init__(self, chat):
        self._chat = chat

    def __getattr__(self, name):
        return getattr(self._chat, name)

    def generate_ids(self, samples, **generation):
        if any("boom" in s["conversations"][0]["value"] for s in samples):
            raise RuntimeError("boom")
        return self._chat.generate_ids(samples, **generation)


def test_a_bug_fails_only_its_request_with_a_json_500(chat):
    server = start(FaultyChat(chat), batch_wait_ms=200)
    try:
        bodies = [request_body(image(8), [], text) for text in ("What is this?", "boom", "Describe it.")]
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda body: call(server.url, "/v1/chat/completions", body, None), bodies))
        assert [status for status, _ in results] == [200, 500, 200]
        assert results[1][1]["error"] == {"message": "internal error: RuntimeError: boom",
                                          "type": "server_error", "param": None, "code": None}
        assert results[2][1]["choices"][0]["message"]["content"] == chat.ask(image(8), [], "Describe it.")
        assert call(server.url, "/health", key=None)[1]["in_flight"] == 0
    finally:
        server.close()


class GatedChat:
    """A RegionChat whose generate waits for a gate: requests pile up in flight, deterministically."""

    def __init__(self, chat):
        self._chat, self.gate = chat, threading.Event()

    def __getattr__(self, name):
        return getattr(self._chat, name)

    def generate_ids(self, samples, **generation):
        assert self.gate.wait(TIMEOUT)
        return self._chat.generate_ids(samples, **generation)


def test_beyond_max_in_flight_answers_429(chat):
    gated = GatedChat(chat)
    server = start(gated, max_in_flight=2, batch_wait_ms=0)
    try:
        body = request_body(image(5), [{"box": [1, 1, 20, 20]}], "What is <region1>?")
        with ThreadPoolExecutor(2) as pool:
            waiting = [pool.submit(call, server.url, "/v1/chat/completions", body, None) for _ in range(2)]
            deadline = time.monotonic() + TIMEOUT
            while call(server.url, "/health")[1]["in_flight"] < 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            status, out = call(server.url, "/v1/chat/completions", body, None)
            assert status == 429 and out["error"]["type"] == "rate_limit_error", out
            gated.gate.set()
            assert [f.result(TIMEOUT)[0] for f in waiting] == [200, 200]
        assert call(server.url, "/health")[1]["rejected"] == 1
        assert call(server.url, "/v1/chat/completions", body, None)[0] == 200
    finally:
        gated.gate.set()
        server.close()


# -- the command -------------------------------------------------------------------------------------------
def test_serve_command_starts_and_answers(export):
    proc = subprocess.Popen([sys.executable, "-m", "regionvlm.cli", "serve", "--model", str(export), "--port", "0",
                             "--model-name", "cli-tiny"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "REGIONVLM_API_KEY": "from-env"})
    try:
        pool = ThreadPoolExecutor(1)  # readline has no timeout of its own
        try:
            line = pool.submit(proc.stdout.readline).result(120)  # "serving 'cli-tiny' at http://127.0.0.1:PORT/ …"
        finally:
            pool.shutdown(wait=False)  # terminating the server below ends a stuck readline
        assert "serving 'cli-tiny' at http://127.0.0.1:" in line, line
        url = line.split(" at ", 1)[1].split("/ ", 1)[0]
        body = request_body(image(6), [], "What is this?")
        assert call(url, "/v1/chat/completions", body, key=None)[0] == 401
        status, out = call(url, "/v1/chat/completions", body, key="from-env")
        assert status == 200 and out["model"] == "cli-tiny"
    finally:
        proc.terminate()
        assert proc.wait(TIMEOUT) == 0  # SIGTERM: a clean stop


def test_serve_command_bad_arguments(tmp_path, capsys):
    from regionvlm.cli import main

    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "--model: no export folder" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path), "--max-in-flight", "0"]) == 2
    assert "--max-in-flight: must be at least 1" in capsys.readouterr().err
