"""Judge LLMs for benchmarks whose answers are free text (``spatial``, ``dlc``).

A judge is any object with ``__call__(prompts: list[str]) -> list[str]`` (greedy, short answers). Benchmarks
without a ``judge:`` use their rule-based parsers instead (documented in docs/benchmarks.md); a judge is
optional and loaded lazily on first call, so configs that name one cost nothing until scoring.

The SpatialRGPT-Bench and DLC-Bench references use GPT-4 class judges; ``hf_judge`` runs any local causal LM
(a ``save_pretrained`` dir or hub id, or a GGUF file through transformers' ``gguf_file=``), so numbers from a
small local judge are indicative, not comparable with the published ones.
"""

from __future__ import annotations

from collections.abc import Sequence

from regionvlm.registry import JUDGES


@JUDGES.register("hf_judge")
class HFJudge:
    """A local causal LM as a judge: greedy decoding of a few tokens per prompt (chat template if any)."""

    def __init__(self, pretrained: str, gguf_file: str | None = None, max_new_tokens: int = 24,
                 batch_size: int = 8, device: str = "cpu", use_chat_template: bool = True):
        self.pretrained, self.gguf_file = pretrained, gguf_file
        self.max_new_tokens, self.batch_size, self.device = max_new_tokens, batch_size, device
        self.use_chat_template = use_chat_template
        self._model = self._tokenizer = None

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
            return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
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


def build_judge(node) -> object | None:
    """None (rules) or a judge built from a ``{type: ..., ...}`` node, or an already built callable."""
    if node is None or callable(node):
        return node
    return JUDGES.build(node, key_path="benchmark.judge")
