"""`serve` against hostile clients (issue 23 items 6–10): requests outside the friendly catalogue of
test_serve_api, each answered with the right 4xx in OpenAI's error shape (a 5xx or a dropped connection before),
and the server checks that keep a local server local. docs/errors.md, "serve: hostile requests", lists them."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from test_serve_api import KEY, TIMEOUT, call, image, png_url, random_export, request_body, start


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from regionvlm.inference import RegionChat
    from regionvlm.serve.validation import Limits

    chat = RegionChat.from_pretrained(random_export(tmp_path_factory.mktemp("hostile") / "export"), device="cpu")
    server = start(chat, api_key=KEY, limits=Limits(max_image_pixels=100 * 100, max_new_tokens=32, max_regions=8,
                                                           max_mask_pixels=10_000))
    yield server
    server.close()


def exchange(url: str, request: bytes, read_timeout: float = TIMEOUT, half_close: bool = True) -> bytes:
    """Raw bytes sent, the reply read until the server closes (requests no HTTP library would make)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except TimeoutError:
            pass
    return reply


def post_head(length: str, *extra: str, key: str | None = KEY, host: str = "127.0.0.1") -> bytes:
    lines = ["POST /v1/chat/completions HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
             f"Content-Length: {length}", *extra] + ([f"Authorization: Bearer {key}"] if key else [])
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def hostile_requests() -> dict:
    """Case id → (body, status, param, message fragment), through a real HTTP client."""
    good = image(2)
    box = [{"box": [1, 1, 20, 20]}]
    body = json.dumps(request_body(good, box, "What is <region1>?"))
    return {
        "serve-5000-digit-integer": (body.replace('"messages"', '"n": ' + "9" * 5000 + ', "messages"', 1).encode(),
                                     400, None, "not valid JSON"),
        "serve-box-coordinate-10e400": (request_body(good, [{"box": [1, 1, 10 ** 400, 20]}], "What is <region1>?"),
                                        400, "messages[0].regions[0].box", "4 finite numbers"),
        "serve-5000-digit-region-tag": (request_body(good, box, "What is <region" + "7" * 5000 + ">?"), 400,
                                        "messages[0].content", "no message has that many regions"),
        "serve-lone-surrogate": (body.replace("What is", "What\\ud800 is").encode(), 400,
                                 "messages[0].content[1].text", "lone surrogate"),
        "serve-too-many-regions": (request_body(good, box * 9, "What is <region1>?"), 413, "messages[0].regions",
                                   "at most 8 per request"),
        "serve-mask-pixels-over-limit": (request_body(good, [{"mask": png_url(np.full((48, 64), 255, np.uint8))}] * 4,
                                                      "What is <region1>?"), 413, "messages[0].regions",
                                         "4 masks of 64×48 = 12288 pixels"),
        "serve-lone-surrogate-model": (request_body(good, box, "What is <region1>?", model="\ud800"), 404, "model",
                                       "is not served here"),  # the error echoing it could not be encoded
        "serve-huge-prompt": (request_body(good, box, "What is <region1>? " + "x" * 200_000), 413,
                              "messages[0].content", "at most 100000"),
    }


@pytest.mark.parametrize("case", list(hostile_requests()))
def test_hostile_request_gets_its_4xx(server, case):
    body, status, param, message = hostile_requests()[case]
    got, out = call(server.url, "/v1/chat/completions", body)
    assert got == status, out
    assert out["error"]["param"] == param and message in out["error"]["message"], out


def test_a_huge_prompt_is_refused_before_tokenising_and_does_not_stall_others(server):
    """40 MB of text: refused at once in its own thread (it was tokenised on the model's thread: 86 s)."""
    start_t = time.monotonic()
    status, out = call(server.url, "/v1/chat/completions",
                       request_body(image(2), [], "What is this? " + "word " * 6_000_000))
    assert status == 413 and time.monotonic() - start_t < 20, out


def test_the_key_is_checked_before_the_body_is_read(server):
    """A client without the key announcing a 30 MB body gets 401 at once; nothing is read (it waited for it)."""
    start_t = time.monotonic()
    reply = exchange(server.url, post_head(str(30 << 20), key=None), read_timeout=10, half_close=False)
    assert reply.startswith(b"HTTP/1.1 401") and time.monotonic() - start_t < 5, reply[:200]
    # "Expect: 100-continue" (curl's way for bodies over 1 MB): the 401 instead of the go-ahead to upload it
    reply = exchange(server.url, post_head(str(30 << 20), "Expect: 100-continue", key=None), read_timeout=10,
                     half_close=False)
    assert reply.startswith(b"HTTP/1.1 401") and b"100 Continue" not in reply, reply[:200]
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:  # with the key: the go-ahead, then the body
        sock.sendall(post_head("2", "Expect: 100-continue"))
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")


GET_HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
RAW_REQUESTS = [
    (post_head("²"), b"411", b"Content-Length header is required"),  # '²'.isdigit() is True, int('²') fails
    (post_head("10", "Transfer-Encoding: chunked") + b"0123456789", b"400", b"Transfer-Encoding is not accepted"),
    (post_head("10", host="evil.example:8000") + b"0123456789", b"403", b"evil.example:8000"),
    (post_head("10").replace(b"application/json", b"text/plain") + b"0123456789", b"415", b"application/json"),
    (post_head("9" * 5000), b"413", b"a 5000-digit number of bytes"),  # int() of 5000 digits: ValueError, a 500
    (post_head("2", "Content-Length: 40") + b"{}", b"400", b"Content-Length given more than once"),
    (GET_HEALTH.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n") + b"0\r\n\r\n", b"411",
     b"Transfer-Encoding is not accepted"),
    (GET_HEALTH.replace(b"\r\n\r\n", b"\r\nContent-Length: %d\r\n\r\n" % len(GET_HEALTH)) + GET_HEALTH, b"200",
     b'"status": "ok"'),  # a GET's body (a request of its own) was answered as the next request
    (b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\n\r\n", b"405",
     b'"OPTIONS is not allowed'),  # a CORS preflight: JSON, not http.server's HTML 501
]
RAW_CASES = ["serve-content-length-superscript", "serve-transfer-encoding-and-length", "serve-foreign-host",
             "serve-text-plain-post", "serve-content-length-5000-digits", "serve-content-length-twice",
             "serve-get-with-transfer-encoding", "serve-get-with-a-body", "serve-cors-preflight"]


@pytest.mark.parametrize("request_bytes, status, fragment", RAW_REQUESTS, ids=RAW_CASES)
def test_malformed_or_foreign_requests_are_refused_and_the_connection_closed(server, request_bytes, status, fragment):
    reply = exchange(server.url, request_bytes + post_head("2") + b"{}")  # a smuggled second request: never answered
    assert reply.startswith(b"HTTP/1.1 " + status) and fragment in reply, reply[:300]
    assert reply.count(b"HTTP/1.1 ") == 1 and b"Connection: close" in reply


def test_loopback_names_are_served_and_the_page_has_its_headers(server):
    port = server.server_address[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "[::1]", "LOCALHOST"):
        reply = exchange(server.url, f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert reply.startswith(b"HTTP/1.1 200"), (host, reply[:100])
    reply = exchange(server.url, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").decode()
    head = reply.split("\r\n\r\n", 1)[0]
    assert "Content-Security-Policy: default-src 'none';" in head and "frame-ancestors 'none'" in head
    assert "X-Frame-Options: DENY" in head and "X-Content-Type-Options: nosniff" in head


@pytest.mark.parametrize("bound, extra, host, ok", [
    ("127.0.0.1", (), "box.lan:8000", False), ("127.0.0.1", ("box.lan",), "BOX.lan:8000", True),
    ("0.0.0.0", (), "anything:1", True), ("0.0.0.0", ("box.lan",), "other", False),
    ("10.0.0.5", (), "10.0.0.5:8000", True), ("::", (), "[::1]:80", True), ("127.0.0.1", (), "[::1]:80", True),
])
def test_allowed_hosts_and_a_wildcard_bind(bound, extra, host, ok):
    from regionvlm.serve.app import allowed_host_names, host_name

    names = allowed_host_names(bound, extra)
    assert (names is None or host_name(host) in names) is ok


def test_control_characters_in_request_lines_are_logged_escaped(server, caplog):
    with caplog.at_level(logging.INFO, logger="regionvlm.serve"):
        exchange(server.url, b"GET /\x1b[31mred\x1b[0m HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        time.sleep(0.2)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "\\x1b[31mred" in logged and "\x1b" not in logged, logged


def test_clients_that_leave_are_one_line_not_internal_errors(server, caplog):
    body = json.dumps(request_body(image(3), [{"box": [1, 1, 20, 20]}], "What is <region1>?")).encode()
    with caplog.at_level(logging.INFO, logger="regionvlm.serve"):
        for _ in range(3):  # ask and leave at once: the answer is written to a closed socket
            host, port = server.url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port))) as sock:
                sock.sendall(post_head(str(len(body))) + body)
        time.sleep(3)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or "internal error" in r.getMessage()]
    assert call(server.url, "/health")[0] == 200


def test_an_empty_key_in_the_environment_is_refused(monkeypatch, capsys, tmp_path):
    from regionvlm.cli import main

    (tmp_path / "export").mkdir()
    monkeypatch.setenv("REGIONVLM_API_KEY", "")
    assert main(["serve", "--model", str(tmp_path / "export")]) == 2
    assert "REGIONVLM_API_KEY: is empty" in capsys.readouterr().err


def test_masks_beyond_the_limit_are_refused_before_decoding(server):
    """30 image-sized masks in a small body: refused by count before any is decoded (they added 1.2 GB)."""
    mask = png_url(np.full((48, 64), 255, np.uint8))
    status, out = call(server.url, "/v1/chat/completions",
                       request_body(image(2), [{"mask": mask}] * 30, "What is <region1>?"))
    assert status == 413 and out["error"]["param"] == "messages[0].regions"


def test_the_catalogue_in_docs_lists_every_hostile_case():
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text()
    section = text.split("## serve: hostile requests", 1)[1].split("\n## ", 1)[0]
    ids = list(hostile_requests()) + RAW_CASES
    assert sorted(re.findall(r"^\| `([a-z0-9-]+)` \|", section, re.M)) == sorted(ids)


@pytest.mark.slow
def test_the_hostile_load_script_runs_and_finds_no_5xx(tmp_path):
    """benchmarks/perf/serve_hostile.py, shortened: no 5xx, the server alive (the figures are docs/serving.md's)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "hostile.json"
    run = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks/perf/serve_hostile.py"),
                          "--seconds", "3", "--valid", "8", "--hostile", "8", "--json", str(out)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["five_xx"] == 0 and figures["alive"] is True
    assert all(status[0] == "4" or status == "left" for kind, counts in figures["statuses"].items()
               if kind != "valid" for status in counts)
