"""``--engine vllm`` end to end: the region front end computes the input embeddings here, vLLM (its own Python
environment, `make vllm`) runs the LLM from the export's ``llm/`` folder, and greedy answers equal the built-in
engine's — through ``predict`` (batch and single), ``eval`` of one benchmark, `RegionChat` and its streaming.
Skipped with the reason when ``.venv-vllm`` is missing (``make test`` builds it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_serve_api import random_export
from test_vllm import VLLM_PYTHON, needs_vllm

from regionvlm.cli import main

pytestmark = needs_vllm
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    out = random_export(tmp_path_factory.mktemp("vllm_engine") / "export")
    assert (out / "llm" / "regionvlm_llm.json").is_file()  # every export carries its LLM folder
    return out


@pytest.fixture(scope="module")
def server(export):
    """One vLLM child on the export's LLM folder for the module (an engine start is ~25 s on 2 cores)."""
    from regionvlm.vllm_engine import VLLMServer

    with VLLMServer(export / "llm", python=VLLM_PYTHON, kv_cache_gib=1) as srv:
        yield srv


def questions(workspace: Path, n: int = 64) -> list[dict]:
    """``n`` varied region questions on the synthetic images: boxes and masks, one or two regions, three prompts."""
    images = sorted((workspace / "data" / "synth" / "images").glob("*.png"))
    prompts = ["What is <region1>?", "Describe <region1> briefly.", "What is <region1> next to <region2>?"]
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        x, y = (int(v) for v in rng.integers(0, 60, 2))
        regions = [{"bbox": [x, y, 30 + i % 20, 30]}, {"bbox_xyxy": [70, 70, 120, 120]}]
        prompt = prompts[i % 3]
        rows.append({"id": f"q{i}", "image": str(images[i % len(images)]), "regions": regions[:1 + (i % 3 == 2)],
                     "conversations": [{"from": "human", "value": f"<image>\n{prompt}"}]})
    return rows


def answers(path: Path) -> dict[str, str]:
    return {r["id"]: r["answer"] for r in map(json.loads, path.read_text().splitlines())}


def test_predict_batch_answers_equal_the_builtin_engines(export, server, tiny_workspace, tmp_path):
    inp = tmp_path / "q.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in questions(tiny_workspace)))
    base = ["predict", "--model", str(export), "--input", str(inp), "--batch-size", "16", "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "builtin.jsonl")]) == 0
    assert main([*base, "--out", str(tmp_path / "vllm.jsonl"), "--engine", "vllm", "--vllm-url", server.url]) == 0
    builtin, vllm = answers(tmp_path / "builtin.jsonl"), answers(tmp_path / "vllm.jsonl")
    assert len(builtin) == 64 and vllm == builtin
    assert len(set(builtin.values())) > 8  # the answers depend on the image and regions: not one string 64 times


def test_eval_of_a_benchmark_equals_the_builtin_engines(export, server, tiny_workspace, tmp_path, capsys):
    common = ["eval", str(ROOT / "projects/rgpt/tiny/eval.yaml"), "--model", str(export),
              "eval.benchmarks={coco_cls: {limit: 64}}", "eval.gallery=0"]
    assert main([*common, f"eval.out_dir={tmp_path}/builtin"]) == 0
    assert main([*common, f"eval.out_dir={tmp_path}/vllm", "--engine", "vllm", "--vllm-url", server.url]) == 0
    rows = {name: (tmp_path / name / "coco_cls" / "predictions.jsonl").read_text() for name in ("builtin", "vllm")}
    assert rows["vllm"] == rows["builtin"] and len(rows["builtin"].splitlines()) >= 40  # every val region (48)
    results = {name: json.loads((tmp_path / name / "results.json").read_text()) for name in ("builtin", "vllm")}
    assert results["vllm"] == results["builtin"]


def test_regionchat_streams_and_asks_as_the_builtin_engine(export, server):
    from regionvlm import RegionChat

    image = (np.random.RandomState(3).rand(48, 64, 3) * 255).astype(np.uint8)
    builtin = RegionChat.from_pretrained(export, device="cpu")
    with RegionChat.from_pretrained(export, device="cpu").use_vllm(url=server.url) as chat:
        for box in ([2, 2, 30, 30], [10, 5, 60, 40]):
            expected = builtin.ask(image, [box], "What is <region1>?")
            assert chat.ask(image, [box], "What is <region1>?") == expected
            assert "".join(chat.stream(image, [box], "What is <region1>?")) == expected
            assert "".join(builtin.stream(image, [box], "What is <region1>?")) == expected
        with pytest.raises(Exception, match="num_beams"):
            chat.ask(image, [[2, 2, 30, 30]], "What is <region1>?", num_beams=2)


def test_predict_starts_its_own_vllm_and_leaves_no_process(export, server, tiny_workspace, tmp_path):
    """No --vllm-url: predict starts vLLM as a child in .venv-vllm, answers, and stops its whole process group."""
    image = str(sorted((tiny_workspace / "data" / "synth" / "images").glob("*.png"))[0])
    ask = [sys.executable, "-m", "regionvlm", "predict", "--model", str(export), "--image", image,
           "--region", "box:5,5,40,40", "--prompt", "What is <region1>?", "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "REGIONVLM_VLLM_PYTHON": str(VLLM_PYTHON)}
    builtin = subprocess.run(ask, capture_output=True, text=True, env=env, timeout=300)
    with_vllm = subprocess.run([*ask, "--engine", "vllm"], capture_output=True, text=True, env=env, timeout=600)
    assert builtin.returncode == 0 and with_vllm.returncode == 0, with_vllm.stderr[-2000:]
    assert with_vllm.stdout.splitlines()[-1] == builtin.stdout.splitlines()[-1]
    assert [pid for pid, group in vllm_processes(export) if group != server.pid] == [], \
        "a vLLM process started by predict outlived it"  # (the module's own server is a group of its own)


def vllm_processes(export: Path) -> list[tuple[int, int]]:
    """(pid, process group) of the running processes whose command line names vLLM and this export."""
    out = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            if b"vllm" in cmd.lower() and str(export).encode() in cmd:
                out.append((int(entry), os.getpgid(int(entry))))
        except (OSError, ProcessLookupError):  # ended while we looked
            continue
    return out


@pytest.mark.parametrize("setup, fragment", [
    (lambda export, tmp: ["--engine", "vllm", "--vllm-url", "http://127.0.0.1:9"], "connection refused"),
    (lambda export, tmp: ["--vllm-url", "http://127.0.0.1:9"], "--vllm-url: only with --engine vllm"),
])
def test_engine_failures_are_one_line(export, tiny_workspace, tmp_path, capsys, setup, fragment):
    image = str(sorted((tiny_workspace / "data" / "synth" / "images").glob("*.png"))[0])
    code = main(["predict", "--model", str(export), "--image", image, "--region", "box:5,5,40,40",
                 "--prompt", "What is <region1>?", *setup(export, tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and fragment in err and len(err.splitlines()) == 1, err


def test_an_export_without_its_llm_folder_is_one_line(export, tiny_workspace, tmp_path, capsys):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(export, bare, ignore=shutil.ignore_patterns("llm"))
    image = str(sorted((tiny_workspace / "data" / "synth" / "images").glob("*.png"))[0])
    code = main(["predict", "--model", str(bare), "--image", image, "--region", "box:5,5,40,40",
                 "--prompt", "What is <region1>?", "--engine", "vllm"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no llm/ folder" in err and "re-export" in err and len(err.splitlines()) == 1


# -- serve --engine vllm ---------------------------------------------------------------------------------------
def serve_command(export: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    """``regionvlm serve`` in a process of its own; returns it and its URL (from its first line)."""
    from concurrent.futures import ThreadPoolExecutor

    proc = subprocess.Popen([sys.executable, "-m", "regionvlm", "serve", "--model", str(export), "--port", "0",
                             "--device", "cpu", *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    pool = ThreadPoolExecutor(1)  # readline has no timeout of its own
    try:
        line = pool.submit(proc.stdout.readline).result(300)
    finally:
        pool.shutdown(wait=False)
    assert " at http://127.0.0.1:" in line, (line, proc.poll())
    return proc, line.split(" at ", 1)[1].split("/ ", 1)[0]


def region_requests(n: int = 64) -> list[tuple[np.ndarray, list, str]]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        image = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
        x, y = (int(v) for v in rng.integers(0, 30, 2))
        boxes = [[x, y, x + 20 + i % 10, y + 15]] + ([[30, 20, 60, 45]] if i % 3 == 2 else [])
        text = "What is <region1> next to <region2>?" if len(boxes) == 2 else ("What is <region1>?", "Describe "
                                                                                "<region1>.")[i % 2]
        out.append((image, boxes, text))
    return out


def test_serve_through_vllm_answers_64_concurrent_clients_as_the_builtin_engine(export, server, distinct=8):
    """The CLI (`regionvlm serve --engine vllm --vllm-url`), 64 clients at once, half of them streaming: every
    answer equals the built-in engine's; /health names the engine."""
    from concurrent.futures import ThreadPoolExecutor

    from test_serve_api import call, request_body, sse_events

    from regionvlm import RegionChat

    cases = region_requests()
    builtin = RegionChat.from_pretrained(export, device="cpu")
    expected = builtin.generate([builtin.sample(im, boxes, text) for im, boxes, text in cases])
    assert len(set(expected)) > distinct
    proc, url = serve_command(export, "--engine", "vllm", "--vllm-url", server.url)
    try:
        def ask(i):
            image, boxes, text = cases[i]
            body = request_body(image, [{"box": b} for b in boxes], text, temperature=0)
            if i % 2:
                status, _, events = sse_events(url, {**body, "stream": True}, key=None)
                assert status == 200 and events[-1] == "[DONE]"
                return "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
            status, out = call(url, "/v1/chat/completions", body, key=None)
            assert status == 200, out
            return out["choices"][0]["message"]["content"]

        with ThreadPoolExecutor(64) as pool:
            got = list(pool.map(ask, range(64)))
        assert got == expected
        health = call(url, "/health", key=None)[1]
        assert health["engine"] == "vllm" and health["vllm_ready"] is True and health["in_flight"] == 0
        assert health["largest_batch"] > 1  # the front end embedded concurrent questions together
    finally:
        proc.terminate()
        assert proc.wait(60) == 0


def test_serve_answers_503_while_vllm_is_gone_and_serves_again_after(export, server):
    """vLLM unreachable mid-service: each request gets a 503 JSON error (streamed or not), /health says so, the
    front end stays up and answers again once vLLM is back."""
    from test_serve_api import call, request_body, start

    from regionvlm import RegionChat
    from regionvlm.vllm_engine import VLLMClient

    image = (np.random.RandomState(4).rand(48, 64, 3) * 255).astype(np.uint8)
    body = request_body(image, [{"box": [2, 2, 30, 30]}], "What is <region1>?")
    with RegionChat.from_pretrained(export, device="cpu").use_vllm(url=server.url) as chat:
        app = start(chat)
        try:
            good = chat.engine.client
            assert call(app.url, "/v1/chat/completions", body, key=None)[0] == 200
            chat.engine.client = VLLMClient("http://127.0.0.1:9", model=good.model)  # nothing listens there
            for extra in ({}, {"stream": True}):
                status, out = call(app.url, "/v1/chat/completions", {**body, **extra}, key=None)
                assert status == 503 and out["error"]["type"] == "server_error", out
                assert "connection refused" in out["error"]["message"]
            health = call(app.url, "/health", key=None)[1]
            assert health["vllm_ready"] is False and health["in_flight"] == 0
            chat.engine.client = good
            assert call(app.url, "/v1/chat/completions", body, key=None)[0] == 200
        finally:
            app.close()


@pytest.mark.slow
def test_the_small_presets_export_answers_through_vllm_as_the_builtin_engine(tiny_workspace, tmp_path):
    """A real pretrained LLM (SmolLM2-135M-Instruct, `make smollm2`) behind the small preset's region path, as
    the preset builds it (region path freshly initialised: what matters is that both engines decode the same
    fused embeddings the same way): 64 region questions each through predict and serve (64 concurrent
    clients), greedy, answers equal. ~4 min."""
    import torch
    from omegaconf import OmegaConf

    from regionvlm.card import save_export
    from regionvlm.config import load_config
    from regionvlm.engine.build import build_model_and_tokenizer

    smollm2 = ROOT / "data" / "smollm2-135m-instruct"  # where `make smollm2` writes it
    if not (smollm2 / "config.json").is_file():
        pytest.skip(f"no SmolLM2 folder at {smollm2} (make smollm2)")
    cfg = OmegaConf.to_container(load_config(ROOT / "projects/rgpt/small/train.yaml"), resolve=True)
    cfg["model"]["llm"]["pretrained"] = str(smollm2)
    cfg["model"].pop("init_components")  # engines compared on the same weights: a random vision side will do
    cfg["generation"] = {**cfg.get("generation", {}), "max_new_tokens": 24}
    torch.manual_seed(0)
    model, tokenizer, _ = build_model_and_tokenizer(cfg["model"])
    export = save_export(tmp_path / "small", model, tokenizer, cfg)
    inp = tmp_path / "q.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in questions(tiny_workspace)))
    base = ["predict", "--model", str(export), "--input", str(inp), "--batch-size", "16", "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "builtin.jsonl")]) == 0
    assert main([*base, "--out", str(tmp_path / "vllm.jsonl"), "--engine", "vllm", "--vllm-kv-cache-gib", "2",
                 "--vllm-python", str(VLLM_PYTHON)]) == 0
    builtin, vllm = answers(tmp_path / "builtin.jsonl"), answers(tmp_path / "vllm.jsonl")
    assert len(builtin) == 64 and len(set(builtin.values())) > 3  # an untrained region path: few distinct
    assert vllm == builtin
    # serve, 64 concurrent clients. (Not eval's scope benchmark: its 64 near-identical prompts meet near-ties a
    # few tokens in, where greedy answers depend on float rounding — the built-in engine's own answers at batch
    # size 1 and 16 differ on 30 of 64 — so equality there tests the rounding, not the engines.)
    from regionvlm.vllm_engine import VLLMServer

    with VLLMServer(export / "llm", python=VLLM_PYTHON, kv_cache_gib=2) as srv:
        test_serve_through_vllm_answers_64_concurrent_clients_as_the_builtin_engine(export, srv, distinct=3)


def test_datagen_with_the_regionvlm_captioner_through_vllm_writes_the_builtin_engines_captions(export, server,
                                                                                              tiny_workspace):
    """datagen's regionvlm captioner with ``engine: vllm`` (the client of serve and predict): the same rows."""
    from omegaconf import OmegaConf

    from regionvlm.config import load_config
    from regionvlm.datagen.runner import run_datagen

    rows = {}
    for engine, extra in (("builtin", []), ("vllm", ["datagen.captioner.engine=vllm",
                                                     f"datagen.captioner.vllm_url={server.url}"])):
        out = tiny_workspace / f"datagen-{engine}"
        config = OmegaConf.to_container(load_config(ROOT / "projects/rgpt/tiny/datagen.yaml", [
            f"datagen.captioner.export={export}", "datagen.captioner.max_new_tokens=4", f"datagen.output.dir={out}",
            "datagen.filters.require_class=false", "datagen.sources.0.max_samples=6", *extra]), resolve=True)
        assert run_datagen(config)["stages"]["region_caption"]["regions"] > 0
        rows[engine] = (out / "captions.jsonl").read_text()
    assert rows["vllm"] == rows["builtin"] and rows["builtin"].strip()
