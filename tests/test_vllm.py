"""vLLM as the generation engine (issue 21): the LLM folder an export writes for ``vllm serve``, the client that
sends prompt embeddings, and the child-process manager.

Without vLLM: the folder loads back in transformers with the same logits and renders the collator's prompts; the
client against a stand-in HTTP server (the request as vLLM reads it, streaming, every failure as a `VLLMError`);
the manager with a stand-in ``vllm serve`` (a Python that serves /health and starts an "engine" grandchild):
start, stop, a child that dies at start or never gets healthy, and no orphan when the parent or the API server is
killed. With ``.venv-vllm`` (``make vllm``; skipped with that reason when it is missing): a real vLLM child on a
tiny random LLaMA answers 64 prompt embeddings (some positions replaced by non-token vectors, as region features
are) greedily with exactly transformers' tokens, streams the same, refuses what it should, and leaves no process
behind when killed.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from conftest import TINY

from regionvlm.errors import UserError
from regionvlm.llm_folder import INFO_FILE, chat_template_jinja, find_llm_folder, read_llm_folder, write_llm_folder
from regionvlm.vllm_engine import (
    VLLMClient,
    VLLMError,
    VLLMRequestError,
    VLLMServer,
    VLLMUnavailable,
    check_vllm_python,
    encode_prompt_embeds,
    free_port,
)

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("REGIONVLM_VLLM_PYTHON") or ROOT / ".venv-vllm" / "bin" / "python")


def _vllm_missing() -> str | None:
    try:
        check_vllm_python(VLLM_PYTHON)
    except VLLMUnavailable as exc:
        return str(exc)
    return None


VLLM_MISSING = _vllm_missing()
if VLLM_MISSING and os.environ.get("REGIONVLM_REQUIRE_VLLM") == "1":  # CI: a failed `make vllm` must not pass
    raise RuntimeError(f"REGIONVLM_REQUIRE_VLLM=1 but {VLLM_MISSING}")
needs_vllm = pytest.mark.skipif(VLLM_MISSING is not None, reason=str(VLLM_MISSING))

# head size 32: the smallest vLLM's CPU attention supports (16 fails at the first request)
TINY_LLM = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 512,
            "tie_word_embeddings": True, "initializer_range": 0.5}  # wide weights: varied answers, some end at EOS


def tiny_llm(**overrides):
    from regionvlm.plugins.llms import HFCausalLM, build_tokenizer

    tok = build_tokenizer({"tokenizer": str(TINY / "tokenizer")})
    torch.manual_seed(0)
    return HFCausalLM(len(tok), config={**TINY_LLM, **overrides}).eval(), tok


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny LLaMA component with the tiny tokenizer (placeholder tokens added) and its LLM folder."""
    llm, tok = tiny_llm()
    folder = write_llm_folder(llm, tok, tmp_path_factory.mktemp("llm") / "llm", template="plain", max_length=128)
    return llm, tok, folder


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


# -- the LLM folder ----------------------------------------------------------------------------------------------
def test_llm_folder_loads_in_transformers_with_the_same_weights_and_tokens(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm, tok, folder = tiny
    back = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([[7, 100, 4, 5, 300, 2]])
    assert torch.equal(logits(back, ids), logits(llm.model, ids))
    tok2 = AutoTokenizer.from_pretrained(folder)
    assert len(tok2) == len(tok) and tok2("a <image_patch> b <region_feat>").input_ids == \
        tok("a <image_patch> b <region_feat>").input_ids
    gen = json.loads((folder / "generation_config.json").read_text())
    # nothing vLLM would apply to every request as a default (temperature, top_p, repetition_penalty, ...)
    assert set(gen) - {"transformers_version"} == {"bos_token_id", "eos_token_id", "pad_token_id"}
    assert gen["eos_token_id"] == tok.eos_token_id == json.loads((folder / "config.json").read_text())["eos_token_id"]
    info = read_llm_folder(folder)
    assert info["hidden_size"] == 64 and info["vocab_size"] == len(tok) and info["dtype"] == "float32"
    assert info["max_length"] == 128 and info["image_token_id"] == tok.convert_tokens_to_ids("<image_patch>")
    assert not list(folder.parent.glob(".*tmp"))


def test_llm_folder_casts_to_the_dtype_asked(tmp_path, tiny):
    llm, tok, _ = tiny
    folder = write_llm_folder(llm, tok, tmp_path / "llm", dtype="bf16")
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert read_llm_folder(folder)["dtype"] == "bfloat16"
    assert llm.model.dtype == torch.float32  # the component itself is untouched
    with pytest.raises(UserError, match="unknown dtype"):
        write_llm_folder(llm, tok, tmp_path / "x", dtype="int4")


@pytest.mark.parametrize("template", ["vicuna_v1", "plain"])
def test_chat_template_renders_what_the_collator_renders(tmp_path, tiny, template):
    from transformers import AutoTokenizer

    from regionvlm.text.templates import EOS, render

    llm, tok, _ = tiny
    folder = write_llm_folder(llm, tok, tmp_path / "llm", template=template)
    tok2 = AutoTokenizer.from_pretrained(folder)
    def rendered(conversations, for_generation=False):
        return render(template, tok, conversations, for_generation)
    conversations = [{"from": "human", "value": "What is it?"}, {"from": "gpt", "value": "a red circle"},
                     {"from": "human", "value": "And its colour?"}]
    messages = [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
                for t in conversations]

    def expected(pieces):
        return tok.bos_token + "".join(tok.eos_token if p is EOS else p for p, _ in pieces)

    assert tok2.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        expected(rendered(conversations, for_generation=True))
    answered = [*conversations[:2]]
    assert tok2.apply_chat_template(messages[:2], tokenize=False) == expected(rendered(answered))
    if template == "vicuna_v1":  # a system turn replaces the default system prompt
        with_system = [{"from": "system", "value": "Be brief."}, *conversations]
        assert tok2.apply_chat_template([{"role": "system", "content": "Be brief."}, *messages], tokenize=False,
                                        add_generation_prompt=True) == \
            expected(rendered(with_system, for_generation=True))


def test_chat_template_of_the_tokenizer_is_kept(tmp_path, tiny):
    from transformers import AutoTokenizer

    llm, tok, _ = tiny
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    try:
        folder = write_llm_folder(llm, tok, tmp_path / "llm", template="chat_template")
    finally:
        tok.chat_template = None
    tok2 = AutoTokenizer.from_pretrained(folder)
    assert tok2.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "[user] hi\n"
    assert chat_template_jinja("chat_template") is None
    with pytest.raises(UserError, match="unknown template 'chatml'"):
        chat_template_jinja("chatml")


def _randomise_lora(llm):
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in llm.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # peft starts B at zero: merged would equal the base


def test_llm_folder_merges_lora_or_keeps_the_adapters_beside(tmp_path):
    pytest.importorskip("peft")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    llm, tok = tiny_llm()
    llm.add_lora({"r": 4, "alpha": 8, "dropout": 0.0})
    _randomise_lora(llm)
    llm.eval()
    ids = torch.tensor([[7, 100, 4, 5, 300, 2]])
    want = logits(llm.model, ids)

    merged = write_llm_folder(llm, tok, tmp_path / "merged")
    back = AutoModelForCausalLM.from_pretrained(merged).eval()
    assert torch.allclose(logits(back, ids), want, atol=1e-4)
    assert read_llm_folder(merged)["lora"] is None and not (merged / "lora").exists()
    assert llm.lora is not None  # the component keeps its adapters

    separate = write_llm_folder(llm, tok, tmp_path / "separate", merge_lora=False)
    info = read_llm_folder(separate)
    assert info["lora"] == {"folder": "lora", "rank": 4}
    base = AutoModelForCausalLM.from_pretrained(separate).eval()  # plain keys: no lora_A / base_layer in it
    assert not torch.allclose(logits(base, ids), want, atol=1e-3)
    with_adapters = PeftModel.from_pretrained(base, separate / "lora").eval()
    assert torch.allclose(logits(with_adapters, ids), want, atol=1e-4)


def test_llm_folder_is_written_atomically(tmp_path, tiny, monkeypatch):
    llm, tok, _ = tiny
    folder = write_llm_folder(llm, tok, tmp_path / "llm")
    before = (folder / "model.safetensors").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(tok), "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        write_llm_folder(llm, tok, folder)
    assert (folder / "model.safetensors").read_bytes() == before and read_llm_folder(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llm"]  # no temporary folder left


def test_missing_or_partial_llm_folder_is_one_line(tmp_path, tiny):
    llm, tok, folder = tiny
    export = tmp_path / "export"
    export.mkdir()
    with pytest.raises(UserError, match=r"export has no llm/ folder.*re-export"):
        find_llm_folder(export)
    (export / "llm").mkdir()
    with pytest.raises(UserError, match=f"no {INFO_FILE}"):
        find_llm_folder(export)
    copy = write_llm_folder(llm, tok, export / "llm")
    assert find_llm_folder(export) == copy
    (copy / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"incomplete LLM folder \(missing \*\.safetensors\)"):
        read_llm_folder(copy)
    with pytest.raises(UserError, match="not an LLM folder"):
        VLLMServer(tmp_path)


# -- prompt embeddings on the wire -------------------------------------------------------------------------------
def decode_like_vllm(value: str) -> torch.Tensor:
    """What vllm/renderers/embed_utils.py:safe_load_prompt_embeds does with a request's ``prompt_embeds``."""
    payload = base64.b64decode(value, validate=True)
    return torch.load(io.BytesIO(payload), weights_only=True, map_location=torch.device("cpu"))


def test_prompt_embeds_encode_as_vllm_decodes_them():
    x = torch.randn(7, 64)
    assert torch.equal(decode_like_vllm(encode_prompt_embeds(x)), x)
    half = x.to(torch.bfloat16)
    back = decode_like_vllm(encode_prompt_embeds(half))
    assert back.dtype == torch.bfloat16 and torch.equal(back, half)
    batch = torch.randn(64, 100, 64)
    row = encode_prompt_embeds(batch[3, 10:20])  # a view: only its 10×64 values travel, not the batch
    assert torch.equal(decode_like_vllm(row), batch[3, 10:20])
    assert len(row) < 2 * len(encode_prompt_embeds(torch.randn(10, 64)))
    for bad in (torch.randn(64), torch.ones(3, 4, dtype=torch.long), torch.randn(0, 64), torch.randn(2, 3, 4)):
        with pytest.raises(ValueError, match="L×D float tensor"):
            encode_prompt_embeds(bad)


# -- the client against a stand-in server ------------------------------------------------------------------------
class StandIn(ThreadingHTTPServer):
    """An HTTP server answering like vLLM's OpenAI server, with ``behave(handler, body)`` deciding each POST."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):  # a client that hung up
            super().handle_error(request, client_address)

    def __init__(self, behave):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.behave, self.requests, self.active, self.peak = behave, [], 0, 0
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def chunk(self, data: bytes):
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def do_GET(self):
        if self.path == "/health":
            self.reply(200, {})
        elif self.path == "/v1/models":
            self.reply(200, {"object": "list", "data": [{"id": "served-model", "object": "model"}]})
        else:
            self.reply(404, {"error": {"message": "not found"}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        with srv.lock:
            srv.requests.append((self.path, dict(self.headers), body))
            srv.active += 1
            srv.peak = max(srv.peak, srv.active)
        try:
            srv.behave(self, body)
        finally:
            with srv.lock:
                srv.active -= 1


def completion(text="a red circle", ids=(5, 6, 7), reason="stop"):
    return {"id": "cmpl-1", "object": "text_completion", "model": "served-model",
            "choices": [{"index": 0, "text": text, "token_ids": list(ids), "finish_reason": reason}],
            "usage": {"prompt_tokens": 9, "completion_tokens": len(ids), "total_tokens": 9 + len(ids)}}


@pytest.fixture
def standin():
    servers = []

    def make(behave):
        servers.append(StandIn(behave))
        return servers[-1]

    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


def test_client_sends_embeddings_key_and_settings_as_vllm_reads_them(standin):
    srv = standin(lambda h, body: h.reply(200, completion()))
    client = VLLMClient(srv.url + "/v1", api_key="sekret")
    x = torch.randn(9, 64)
    out = client.complete(x, max_tokens=16, temperature=0.7, top_p=0.9, seed=3)
    assert (out.text, out.token_ids, out.finish_reason, out.prompt_tokens) == ("a red circle", [5, 6, 7], "stop", 9)
    path, headers, body = srv.requests[0]
    assert path == "/v1/completions" and headers["Authorization"] == "Bearer sekret"
    assert body["model"] == "served-model"  # asked from /v1/models, once
    assert torch.equal(decode_like_vllm(body["prompt_embeds"]), x)
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (16, 0.7, 0.9, 3)
    assert body["return_token_ids"] is True and "stream" not in body
    greedy = client.complete(x, max_tokens=4)
    assert greedy.token_ids == [5, 6, 7] and srv.requests[1][2]["temperature"] == 0.0
    assert client.check() == ["served-model"] and client.health()
    with pytest.raises(VLLMUnavailable, match="serves served-model, not 'other'"):
        VLLMClient(srv.url, model="other").check()


def test_complete_many_keeps_requests_in_flight_together_and_answers_in_order(standin):
    def behave(h, body):
        n = decode_like_vllm(body["prompt_embeds"]).shape[0]
        time.sleep(0.2)
        h.reply(200, completion(text=str(n), ids=[n]))

    srv = standin(behave)
    client = VLLMClient(srv.url, model="m", max_concurrency=8)
    prompts = [torch.randn(n, 8) for n in range(1, 25)]
    t0 = time.monotonic()
    out = client.complete_many(prompts, max_tokens=2)
    assert [o.token_ids for o in out] == [[n] for n in range(1, 25)]
    assert srv.peak == 8 and time.monotonic() - t0 < 24 * 0.2 / 2  # 3 waves of 8, not 24 one by one
    assert client.complete_many([]) == []


def test_complete_many_raises_or_returns_the_failures(standin):
    def behave(h, body):
        if decode_like_vllm(body["prompt_embeds"]).shape[0] == 3:
            h.reply(400, {"error": {"message": "too long", "type": "BadRequestError", "param": "prompt_embeds"}})
        else:
            h.reply(200, completion())

    client = VLLMClient(standin(behave).url, model="m")
    prompts = [torch.randn(n, 8) for n in (1, 2, 3, 4)]
    with pytest.raises(VLLMRequestError, match="HTTP 400: too long"):
        client.complete_many(prompts)
    out = client.complete_many(prompts, return_exceptions=True)
    assert [type(o).__name__ for o in out] == ["Completion", "Completion", "VLLMRequestError", "Completion"]
    assert out[2].status == 400 and out[2].param == "prompt_embeds"


def _sse(h, events, done=True, cut=False):
    h.send_response(200)
    h.send_header("Content-Type", "text/event-stream")
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    for event in events:
        h.chunk(f"data: {json.dumps(event)}\n\n".encode())
        time.sleep(0.01)
    if cut:  # the server dies mid-answer
        h.close_connection = True
        h.connection.shutdown(2)
        return
    if done:
        h.chunk(b"data: [DONE]\n\n")
    h.chunk(b"")


def _piece(text, ids, reason=None):
    return {"id": "cmpl-1", "object": "text_completion",
            "choices": [{"index": 0, "text": text, "token_ids": ids, "finish_reason": reason}]}


def test_stream_yields_pieces_until_done(standin):
    events = [_piece("a", [5]), _piece(" red", [6]), _piece(" circle", [7], "length"),
              {"id": "cmpl-1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}]
    srv = standin(lambda h, body: _sse(h, events))
    client = VLLMClient(srv.url, model="m")
    deltas = list(client.stream(torch.randn(4, 8), max_tokens=3))
    assert [(d.text, d.token_ids, d.finish_reason) for d in deltas] == [
        ("a", [5], None), (" red", [6], None), (" circle", [7], "length")]
    body = srv.requests[0][2]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    whole = client.stream_text(torch.randn(4, 8), max_tokens=3)
    assert (whole.text, whole.token_ids, whole.finish_reason) == ("a red circle", [5, 6, 7], "length")


def test_stream_cut_or_failing_mid_answer_is_a_vllm_error(standin):
    client = VLLMClient(standin(lambda h, body: _sse(h, [_piece("a", [5])], cut=True)).url, model="m")
    with pytest.raises(VLLMUnavailable, match="mid-answer|ended before"):
        list(client.stream(torch.randn(4, 8)))
    client = VLLMClient(standin(lambda h, body: _sse(h, [_piece("a", [5])], done=False)).url, model="m")
    with pytest.raises(VLLMUnavailable, match=r"ended before \[DONE\]"):
        list(client.stream(torch.randn(4, 8)))
    error = {"error": {"message": "EngineCore encountered an issue", "type": "InternalServerError", "code": 500}}
    client = VLLMClient(standin(lambda h, body: _sse(h, [_piece("a", [5]), error])).url, model="m")
    with pytest.raises(VLLMRequestError, match="EngineCore encountered an issue") as info:
        list(client.stream(torch.randn(4, 8)))
    assert info.value.status == 503


@pytest.mark.parametrize(("status", "payload", "match", "ours"), [
    (400, {"error": {"message": "`prompt_embeds` hidden_size 8 does not match the model's hidden_size 64.",
                     "type": "BadRequestError", "param": "prompt_embeds", "code": 400}}, "hidden_size 8", 400),
    (401, {"error": "Unauthorized"}, "wrong or missing API key", 503),
    (500, {"error": {"message": "EngineCore encountered an issue."}}, "HTTP 500: EngineCore", 503),
])
def test_http_errors_become_one_line_vllm_errors(standin, status, payload, match, ours):
    client = VLLMClient(standin(lambda h, body: h.reply(status, payload)).url, model="m")
    with pytest.raises(VLLMRequestError, match=match) as info:
        client.complete(torch.randn(3, 8))
    err = info.value
    assert isinstance(err, UserError) and err.http_status == status and err.status == ours
    assert "\n" not in str(err) and str(err).startswith(f"vLLM at {client.url}: HTTP {status}")


def test_unreachable_closed_or_silent_server_is_unavailable(standin):
    client = VLLMClient(f"http://127.0.0.1:{free_port()}", model="m")
    with pytest.raises(VLLMUnavailable, match="connection refused") as info:
        client.complete(torch.randn(3, 8))
    assert info.value.status == 503 and isinstance(info.value, VLLMError) and not client.health()
    with pytest.raises(VLLMUnavailable, match="connection refused"):
        client.check()

    def hang_up(h, body):
        h.close_connection = True
        h.connection.shutdown(2)

    with pytest.raises(VLLMUnavailable, match="closed mid-answer"):
        VLLMClient(standin(hang_up).url, model="m").complete(torch.randn(3, 8))
    slow = standin(lambda h, body: (time.sleep(1.5), h.reply(200, completion())))
    with pytest.raises(VLLMUnavailable, match="no answer within 0.3 s"):
        VLLMClient(slow.url, model="m", timeout=0.3).complete(torch.randn(3, 8))
    with pytest.raises(VLLMUnavailable, match="expected http://HOST:PORT"):
        VLLMClient("ftp://example")


# -- the manager with a stand-in vLLM ---------------------------------------------------------------------------
FAKE_VLLM = r'''
import http.server, os, signal, subprocess, sys, time
args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
mode = os.environ.get("FAKE_VLLM_MODE", "serve")
if mode == "die":
    print("fake vllm: no device found to run the model on", flush=True)
    sys.exit(3)
if mode == "hang":
    time.sleep(600)
# like vLLM's engine core: a grandchild, here one that ignores SIGTERM (only SIGKILL stops it)
engine = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                           "signal.SIG_IGN); time.sleep(600)"])
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
print("fake vllm serving; engine pid", engine.pid, flush=True)
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
'''


@pytest.fixture(scope="module")
def fake_python(tmp_path_factory):
    """A stand-in for the vLLM environment's Python: passes the 'vllm importable' probe, runs the supervisor with
    the real Python, and runs FAKE_VLLM for ``-m vllm.entrypoints.openai.api_server``."""
    d = tmp_path_factory.mktemp("fakevllm")
    (d / "fake_vllm.py").write_text(FAKE_VLLM)
    py = d / "python"
    py.write_text(f'#!/bin/sh\ncase "$1" in\n  -c) exit 0 ;;\n  -I) exec "{sys.executable}" "$@" ;;\n'
                  f'  -m) shift 2; exec "{sys.executable}" "{d / "fake_vllm.py"}" "$@" ;;\nesac\nexit 99\n')
    py.chmod(0o755)
    return py


def members(pgid: int) -> list[tuple[int, int]]:
    """(pid, parent pid) of the running (not zombie) processes of group ``pgid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append((int(stat.parent.name), int(fields[1])))
    return out


def wait_gone(pgid: int, timeout: float) -> float:
    t0 = time.monotonic()
    while members(pgid) and time.monotonic() - t0 < timeout:
        time.sleep(0.1)
    assert not members(pgid), f"processes of group {pgid} still run after {timeout} s: {members(pgid)}"
    return time.monotonic() - t0


def test_server_starts_serves_and_stops_its_whole_group(tiny, fake_python, tmp_path):
    _, _, folder = tiny
    srv = VLLMServer(folder, python=fake_python, stop_grace=1.0, log_file=tmp_path / "vllm.log", api_key="k")
    cmd = srv.command()
    assert cmd[1:5] == ["-m", "vllm.entrypoints.openai.api_server", "--model", str(folder)]
    assert "--enable-prompt-embeds" in cmd and cmd[cmd.index("--dtype") + 1] == "float32"
    assert cmd[cmd.index("--max-model-len") + 1] == "128" and "k" not in cmd  # the key travels in the environment
    with srv:
        assert srv.alive() and srv.client().health() and srv.url.startswith("http://127.0.0.1:")
        group = members(srv.pid)
        assert len(group) == 3  # supervisor, API server, its engine
        assert os.getpgid(srv.pid) == srv.pid != os.getpgid(0)
    wait_gone(srv.pid, 0.5)  # stop() returned once the SIGTERM-deaf engine was SIGKILLed too
    assert "fake vllm serving" in (tmp_path / "vllm.log").read_text()
    srv.stop()  # twice is fine


def test_a_child_that_dies_or_hangs_at_start_is_one_error_with_its_log(tiny, fake_python):
    _, _, folder = tiny
    srv = VLLMServer(folder, python=fake_python, env={"FAKE_VLLM_MODE": "die"})
    with pytest.raises(VLLMUnavailable, match="vLLM exited with code 3 while starting") as info:
        srv.start()
    assert "no device found to run the model on" in str(info.value) and str(srv.log_path) in str(info.value)
    srv = VLLMServer(folder, python=fake_python, env={"FAKE_VLLM_MODE": "hang"}, start_timeout=1.5,
                     stop_grace=1.0)
    with pytest.raises(VLLMUnavailable, match="did not get healthy within 1.5 s"):
        srv.start()
    wait_gone(srv.pid, 1.0)


def test_no_vllm_environment_is_one_line(tiny, tmp_path):
    _, _, folder = tiny
    with pytest.raises(VLLMUnavailable, match=r"vLLM is not installed: no Python at .*make vllm"):
        VLLMServer(folder, python=tmp_path / "nope" / "python").start()
    import importlib.util

    if importlib.util.find_spec("vllm") is None:  # the project's own environment has no vLLM
        with pytest.raises(VLLMUnavailable, match="vLLM is not installed in"):
            VLLMServer(folder, python=sys.executable).start()


PARENT = r'''
import json, sys
from regionvlm.vllm_engine import VLLMServer
srv = VLLMServer(sys.argv[1], python=sys.argv[2], stop_grace=float(sys.argv[3]), log_file=sys.argv[4],
                 api_key=sys.argv[5] or None, kv_cache_gib=1, start_timeout=600)
srv.start()
print(json.dumps({"url": srv.url, "pgid": srv.pid}), flush=True)
sys.stdin.readline()
srv.stop()
'''


def start_parent(folder, python, log, stop_grace=1.0, api_key=""):
    """A process that starts a `VLLMServer` and waits; returns (process, {"url", "pgid"})."""
    proc = subprocess.Popen([sys.executable, "-c", PARENT, str(folder), str(python), str(stop_grace), str(log),
                             api_key], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=30)
        pytest.fail(f"the parent process could not start vLLM (exit {proc.returncode}); log:\n"
                    f"{Path(log).read_text()[-3000:] if Path(log).exists() else ''}")
    return proc, json.loads(line)


def test_killed_parent_leaves_no_orphan(tiny, fake_python, tmp_path):
    _, _, folder = tiny
    parent, info = start_parent(folder, fake_python, tmp_path / "vllm.log")
    assert len(members(info["pgid"])) == 3
    parent.kill()  # SIGKILL: nothing of the parent runs; PR_SET_PDEATHSIG tells the supervisor
    parent.wait()
    wait_gone(info["pgid"], 10.0)


def test_crashed_api_server_leaves_no_orphan(tiny, fake_python, tmp_path):
    _, _, folder = tiny
    srv = VLLMServer(folder, python=fake_python, stop_grace=1.0).start()
    try:
        api = next(pid for pid, ppid in members(srv.pid) if ppid == srv.pid)
        os.kill(api, signal.SIGKILL)  # its engine grandchild would run on, reparented to init
        wait_gone(srv.pid, 10.0)
        assert not srv.alive() and srv.proc.returncode == 128 + signal.SIGKILL
    finally:
        srv.stop()


# -- a real vLLM ------------------------------------------------------------------------------------------------
API_KEY = "test-key"
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def vllm_server(tiny, tmp_path_factory):
    """A vLLM child (API key set) on the tiny LLM folder, started by a parent process the last test kills."""
    if VLLM_MISSING:
        pytest.skip(VLLM_MISSING)
    _, _, folder = tiny
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    t0 = time.monotonic()
    parent, info = start_parent(folder, VLLM_PYTHON, log, stop_grace=15.0, api_key=API_KEY)
    info.update(parent=parent, log=log, start_s=time.monotonic() - t0)
    print(f"vLLM started in {info['start_s']:.1f} s")
    yield info
    if parent.poll() is None:
        parent.stdin.close()
        parent.wait(timeout=60)
    wait_gone(info["pgid"], 30.0)


def prompt_embeddings(llm, vocab: int, n: int = 64, seed: int = 1) -> list[torch.Tensor]:
    """``n`` prompts of 4–39 token embeddings; every third has one position replaced by a vector that is no
    token's embedding (as a region feature is)."""
    g = torch.Generator().manual_seed(seed)
    table = llm.get_input_embeddings()
    out = []
    for i in range(n):
        length = int(torch.randint(4, 40, (1,), generator=g))
        with torch.no_grad():
            e = table(torch.randint(6, vocab, (length,), generator=g)).clone()
        if i % 3 == 0:
            e[int(torch.randint(0, length, (1,), generator=g))] = torch.randn(e.shape[1], generator=g) * e.std()
        out.append(e)
    return out


def hf_greedy(llm, tok, prompts, max_new_tokens, batch_size=16) -> list[list[int]]:
    """transformers' greedy ``generate(inputs_embeds=...)``, left-padded batches as the built-in engine runs it;
    each answer up to and including its EOS."""
    answers = []
    for b in range(0, len(prompts), batch_size):
        batch = prompts[b:b + batch_size]
        length = max(len(p) for p in batch)
        x = torch.zeros(len(batch), length, batch[0].shape[1])
        mask = torch.zeros(len(batch), length, dtype=torch.long)
        for j, p in enumerate(batch):
            x[j, length - len(p):], mask[j, length - len(p):] = p, 1
        with torch.no_grad():
            out = llm.generate(inputs_embeds=x, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        for row in out.tolist():
            answers.append(row[:row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row)
    return answers


@needs_vllm
def test_vllm_greedy_answers_from_prompt_embeddings_equal_transformers(tiny, vllm_server):
    llm, tok, _ = tiny
    prompts = prompt_embeddings(llm, len(tok))
    want = hf_greedy(llm, tok, prompts, MAX_TOKENS)
    client = VLLMClient(vllm_server["url"], api_key=API_KEY, model="regionvlm")
    got = client.complete_many(prompts, max_tokens=MAX_TOKENS)
    assert [g.token_ids for g in got] == want
    assert len({tuple(w) for w in want}) == 64 and sum(w[-1] == tok.eos_token_id for w in want) >= 5
    for g, w in zip(got, want):
        assert g.finish_reason == ("stop" if w[-1] == tok.eos_token_id else "length")
    # vLLM's own text is its incremental detokeniser's and can differ from tokenizer.decode (measured here: a
    # partial UTF-8 character at the end dropped, a space added after "..."): answers are decoded from token_ids
    assert any(g.text != tok.decode(w, skip_special_tokens=True) for g, w in zip(got, want))


@needs_vllm
def test_vllm_streams_the_same_answer(tiny, vllm_server):
    llm, tok, _ = tiny
    client = VLLMClient(vllm_server["url"], api_key=API_KEY, model="regionvlm")
    prompts = prompt_embeddings(llm, len(tok), n=6, seed=2)
    for p, whole in zip(prompts, client.complete_many(prompts, max_tokens=MAX_TOKENS)):
        deltas = list(client.stream(p, max_tokens=MAX_TOKENS))
        assert len(deltas) > 1 and deltas[-1].finish_reason == whole.finish_reason
        assert "".join(d.text for d in deltas) == whole.text
        assert sum((d.token_ids for d in deltas), []) == whole.token_ids


@needs_vllm
def test_vllm_sampling_follows_seed_and_settings(tiny, vllm_server):
    llm, tok, _ = tiny
    client = VLLMClient(vllm_server["url"], api_key=API_KEY, model="regionvlm")
    prompts = prompt_embeddings(llm, len(tok), n=8, seed=3)
    settings = {"max_tokens": MAX_TOKENS, "temperature": 1.0, "top_p": 0.9, "seed": 7, "ignore_eos": True}
    first = client.complete_many(prompts, **settings)
    assert [a.token_ids for a in client.complete_many(prompts, **settings)] == [a.token_ids for a in first]
    assert all(len(a.token_ids) == MAX_TOKENS and a.finish_reason == "length" for a in first)
    greedy = client.complete_many(prompts, max_tokens=MAX_TOKENS, ignore_eos=True)
    assert sum(a.token_ids != g.token_ids for a, g in zip(first, greedy)) >= 4


@needs_vllm
def test_vllm_refusals_are_vllm_errors(tiny, vllm_server):
    client = VLLMClient(vllm_server["url"], model="regionvlm")  # no key
    with pytest.raises(VLLMRequestError, match="wrong or missing API key") as info:
        client.complete(torch.randn(4, 64))
    assert info.value.status == 503
    client = VLLMClient(vllm_server["url"], api_key=API_KEY, model="regionvlm")
    with pytest.raises(VLLMRequestError, match="hidden_size 32 does not match") as info:
        client.complete(torch.randn(4, 32))
    assert info.value.status == 400 and info.value.param == "prompt_embeds"
    with pytest.raises(VLLMRequestError) as info:  # longer than --max-model-len (the folder's max_length)
        client.complete(torch.randn(200, 64), max_tokens=4)
    assert info.value.status == 400
    assert client.complete(torch.randn(4, 64), max_tokens=2).completion_tokens == 2  # still serving


@needs_vllm
def test_vllm_killed_parent_mid_answer_leaves_no_orphan(tiny, vllm_server):
    """Last of the module: the parent that started vLLM is SIGKILLed while an answer streams."""
    llm, tok, _ = tiny
    client = VLLMClient(vllm_server["url"], api_key=API_KEY, model="regionvlm", timeout=60)
    stream = client.stream(prompt_embeddings(llm, len(tok), n=1)[0], max_tokens=80, ignore_eos=True)
    assert next(stream).text is not None
    pgid = vllm_server["pgid"]
    assert len(members(pgid)) >= 4  # supervisor, API server, engine core, worker (+ resource tracker)
    vllm_server["parent"].kill()
    vllm_server["parent"].wait()
    took = wait_gone(pgid, 30.0)
    print(f"vLLM's process group gone {took:.1f} s after its parent was killed")
    # what is left of the stream: the tokens vLLM sent before it died (it may have finished: 80 tokens of the
    # tiny model take about as long as the group takes to go), then the connection drops or the dying API server
    # sends an error event ("EngineCore encountered an issue"): either way a 503 for the front end's client
    try:
        for _ in stream:
            pass
    except VLLMError as exc:
        assert exc.status == 503, exc
    with pytest.raises(VLLMUnavailable):
        client.complete(torch.randn(4, 64))


@needs_vllm
def test_vllm_engine_crash_mid_answer_is_a_503_error_and_leaves_no_process(tiny):
    """A worker killed mid-answer (as the OOM killer would): the stream and the next request fail with a
    `VLLMError` a front end answers with 503, and the supervisor stops what is left of vLLM."""
    llm, tok, folder = tiny
    with VLLMServer(folder, python=VLLM_PYTHON, kv_cache_gib=1, max_model_len=512) as srv:
        client = srv.client(timeout=60)
        prompt = prompt_embeddings(llm, len(tok), n=1)[0]
        stream = client.stream(prompt, max_tokens=450, ignore_eos=True)
        assert next(stream).token_ids
        worker = next(pid for pid, _ in members(srv.pid)
                      if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"VLLM::Worker"))
        os.kill(worker, signal.SIGKILL)
        with pytest.raises(VLLMError) as info:
            for _ in stream:
                pass
        assert info.value.status == 503 and "\n" not in str(info.value)
        with pytest.raises(VLLMError) as info:
            client.complete(prompt, max_tokens=4)
        assert info.value.status == 503
        wait_gone(srv.pid, 30.0)
        assert not srv.alive()


def test_the_vllm_captioner_asks_chat_completions_with_the_image_concurrently(standin):
    """datagen's `vllm` captioner: each request one chat completion (the image as a PNG data URL, the prompt,
    greedy), a batch's requests in flight together, answers in order."""
    import base64
    import io

    from PIL import Image

    from regionvlm.datagen.captioners import VLLMCaptioner

    def behave(h, body):
        time.sleep(0.2)  # long enough for the batch's requests to overlap
        text = body["messages"][0]["content"][1]["text"]
        h.reply(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": f" caption of {text} "},
                                   "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 3}})

    srv = standin(behave)
    captioner = VLLMCaptioner(url=srv.url, max_new_tokens=7)
    images = [Image.new("RGB", (8 + i, 6), (10 * i, 0, 0)) for i in range(4)]
    out = captioner.caption([{"image": im, "prompt": f"p{i}"} for i, im in enumerate(images)])
    assert out == [f"caption of p{i}" for i in range(4)]
    posts = [r for r in srv.requests if r[0] == "/v1/chat/completions"]
    assert len(posts) == 4 and srv.peak == 4
    body = next(b for _, _, b in posts if b["messages"][0]["content"][1]["text"] == "p2")
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("served-model", 7, 0.0)
    url = body["messages"][0]["content"][0]["image_url"]["url"]
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert url.startswith("data:image/png;base64,") and sent.size == (10, 6) and sent.getpixel((0, 0)) == (20, 0, 0)
    with pytest.raises(Exception, match="url .* or pretrained"):
        VLLMCaptioner()
