"""Stages 3 and 4's models: registered captioners (kind ``captioner``, contract `regionvlm.contracts.Captioner`).

A captioner answers a list of requests at once (the job gives it every region of a batch of images):
``caption([{"image": PIL, "prompt": str, "regions": Regions | None, "stage": "global" | "region",
"class_name": str | None, "global_caption": str | None}]) → [str]``. ``regions`` is the region in the image's
frame (the close-up's, for region requests). The job calls ``to(device)`` when the captioner has one, on the
device Lightning gives its process. ``missing(**node)`` (a classmethod) lists weights that cannot be found, for
the preflight.

- ``template``: deterministic captions from the pixels (colour, size), for tests and dry runs.
- ``regionvlm``: any regionvlm export (`RegionChat`); ``<region1>`` in a prompt points at the region.
- ``hf_vlm``: a transformers image-text-to-text model (LLaVA-1.5 and later), hub id or local folder.
- ``vllm``: a vision-language model served by vLLM (a running server, or one started here in the vLLM
  environment), through its chat completions API: the client of ``serve --engine vllm``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from regionvlm.errors import ConfigError
from regionvlm.registry import CAPTIONERS

LLAVA_PROMPT = "USER: <image>\n{prompt} ASSISTANT:"
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
           "orange": (240, 140, 30), "purple": (140, 50, 170), "white": (240, 240, 240), "black": (20, 20, 20),
           "gray": (128, 128, 128),
           "light gray": (200, 200, 200), "brown": (130, 80, 40), "pink": (240, 150, 190), "cyan": (40, 200, 210)}


def colour_name(pixels: np.ndarray) -> str:
    """The named colour nearest to the median of ``pixels`` (N×3)."""
    if len(pixels) == 0:
        return "gray"
    median = np.median(pixels.reshape(-1, 3).astype(np.float32), axis=0)
    return min(COLOURS, key=lambda c: float(np.sum((np.asarray(COLOURS[c]) - median) ** 2)))


def _hub_missing(ref: str, key: str) -> list[str]:
    from regionvlm.engine.preflight import _hub_offline

    if Path(ref).exists() or not _hub_offline():
        return []
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(ref, "config.json"), str):
        return []
    return [f"{key}: '{ref}' is not a local folder and not in the Hugging Face cache (HF_HUB_OFFLINE=1)"]


@CAPTIONERS.register("template")
class TemplateCaptioner:
    """Deterministic captions from the pixels (colour and size words): for tests and dry runs."""

    TEMPLATE_FIELDS = {"global_template": ("colour", "num_regions"),   # checked by datagen.settings before a run
                       "region_template": ("size", "colour", "class_name", "global_caption")}

    def __init__(self, global_template: str = "a picture with a {colour} background and {num_regions} objects.",
                 region_template: str = "a {size} {colour} {class_name}, seen in the close-up."):
        self.global_template, self.region_template = global_template, region_template

    def caption(self, requests: list[dict]) -> list[str]:
        return [self._one(r) for r in requests]

    def _one(self, r: dict) -> str:
        arr = np.asarray(r["image"].convert("RGB"))
        regions = r.get("regions")
        if r["stage"] == "global":
            n = len(regions) if regions is not None else 0
            inside = regions.to_masks().any(0) if n else np.zeros(arr.shape[:2], dtype=bool)
            return self.global_template.format(colour=colour_name(arr[~inside]), num_regions=n)
        mask = regions.to_masks()[0] if regions is not None else np.ones(arr.shape[:2], dtype=bool)
        fraction = mask.mean()
        size = "large" if fraction > 0.5 else "medium" if fraction > 0.2 else "small"
        class_name = r.get("class_name") or "object"
        colour = colour_name(arr[mask])
        if colour in class_name.split():  # "a small red circle", not "a small red red circle"
            colour = ""
        text = self.region_template.format(size=size, colour=colour, class_name=class_name,
                                           global_caption=(r.get("global_caption") or "").rstrip("."))
        return " ".join(text.split())


@CAPTIONERS.register("regionvlm")
class RegionVLMCaptioner:
    """A regionvlm export (RegionChat): the prompt as asked; ``<region1>`` in it points at the region.
    ``engine: vllm`` generates through vLLM (``vllm_url``: a running server on the export's llm/ folder; else one
    started here, in ``vllm_python``'s environment, stopped when the job ends), as ``predict --engine vllm``."""

    def __init__(self, export: str, max_new_tokens: int | None = None, engine: str = "builtin",
                 vllm_url: str | None = None, vllm_api_key: str | None = None, vllm_python: str | None = None,
                 vllm_kv_cache_gib: int | None = None):
        from regionvlm.inference import RegionChat

        if not Path(export).is_dir():
            raise ConfigError(f"datagen.captioner.export: no export folder at {export}")
        if engine not in ("builtin", "vllm"):
            raise ConfigError(f"datagen.captioner.engine: expected 'builtin' or 'vllm', got {engine!r}")
        self.chat = RegionChat.from_pretrained(export, device="cpu")
        self.settings = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
        if engine == "vllm":
            options = {} if vllm_kv_cache_gib is None else {"kv_cache_gib": int(vllm_kv_cache_gib)}
            self.chat.use_vllm(export_dir=export, url=vllm_url, api_key=vllm_api_key, python=vllm_python, **options)

    @classmethod
    def missing(cls, export: str, **_: Any) -> list[str]:
        return [] if Path(export).is_dir() else [f"datagen.captioner.export: no export folder at {export}"]

    def to(self, device: Any) -> None:
        self.chat.device = str(device)
        self.chat.model.to(device)

    def caption(self, requests: list[dict]) -> list[str]:
        samples = [self.chat.sample(r["image"], r.get("regions") if "<region1>" in r["prompt"] else None,
                                    r["prompt"], str(i)) for i, r in enumerate(requests)]
        return self.chat.generate(samples, **self.settings)

    def close(self) -> None:
        self.chat.close()


@CAPTIONERS.register("hf_vlm")
class HFVLMCaptioner:
    """A transformers image-text-to-text model (LLaVA-1.5 and later), hub id or local folder, greedy decoding."""

    TEMPLATE_FIELDS = {"prompt_format": ("prompt",)}

    def __init__(self, pretrained: str, prompt_format: str = LLAVA_PROMPT, use_chat_template: bool = True,
                 max_new_tokens: int = 128, dtype: str = "auto", revision: str | None = None):
        """``prompt_format`` (``{prompt}`` is the question) is used when the processor has no chat template or
        ``use_chat_template`` is off; LLaVA-1.5's own format is the default."""
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(pretrained, revision=revision)
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        self.model = AutoModelForImageTextToText.from_pretrained(pretrained, revision=revision,
                                                                 dtype=torch_dtype).eval()
        tok = self.processor.tokenizer
        tok.padding_side = "left"  # batched generation of a decoder-only LLM
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.use_template = use_chat_template and bool(getattr(self.processor, "chat_template", None))
        self.prompt_format, self.max_new_tokens = prompt_format, max_new_tokens

    @classmethod
    def missing(cls, pretrained: str, **_: Any) -> list[str]:
        return _hub_missing(pretrained, "datagen.captioner.pretrained")

    def to(self, device: Any) -> None:
        self.model.to(device)

    def text(self, prompt: str) -> str:
        if self.use_template:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return self.prompt_format.format(prompt=prompt)

    def caption(self, requests: list[dict]) -> list[str]:
        import torch

        inputs = self.processor(images=[r["image"] for r in requests], text=[self.text(r["prompt"]) for r in requests],
                                return_tensors="pt", padding=True).to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = ids[:, inputs["input_ids"].shape[1]:]  # the answers only, not the echoed prompts
        return [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]


@CAPTIONERS.register("vllm")
class VLLMCaptioner:
    """A vision-language model (LLaVA-1.5 and later) served by vLLM, asked through its chat completions API
    (images as PNG data URLs, the model's own chat template, greedy), the requests of a batch sent at once so
    that vLLM batches them continuously. ``url``: a running server (``vllm serve MODEL``); else vLLM is started
    here on ``pretrained`` (a folder or hub id) in ``python``'s environment (default `.venv-vllm`, `make vllm`),
    and stopped when the job ends. ``extra_args``: more ``vllm serve`` arguments (``--tensor-parallel-size``,
    ``--gpu-memory-utilization``, ...). The same client as ``serve --engine vllm``."""

    def __init__(self, pretrained: str | None = None, url: str | None = None, api_key: str | None = None,
                 python: str | None = None, max_new_tokens: int = 128, max_model_len: int | None = None,
                 kv_cache_gib: int | None = None, extra_args: list | None = None, max_concurrency: int = 64):
        from regionvlm.vllm_engine import VLLMClient, VLLMServer

        if (pretrained is None) == (url is None):
            raise ConfigError("datagen.captioner: the vllm captioner takes url (a running vLLM server) or "
                              "pretrained (a model to start vLLM on), not both or neither")
        self.max_new_tokens, self.max_concurrency, self.server = int(max_new_tokens), int(max_concurrency), None
        if url is not None:
            self.client = VLLMClient(url, api_key=api_key, max_concurrency=max_concurrency)
        else:
            self.server = VLLMServer(pretrained, python=python, api_key=api_key, max_model_len=max_model_len,
                                     kv_cache_gib=kv_cache_gib, extra_args=list(extra_args or []),
                                     prompt_embeds=False).start()
            self.client = self.server.client(max_concurrency=max_concurrency)
        self.client.check()

    @classmethod
    def missing(cls, pretrained: str | None = None, **_: Any) -> list[str]:
        return _hub_missing(pretrained, "datagen.captioner.pretrained") if pretrained else []

    def ask(self, request: dict) -> str:
        import base64
        import io

        buf = io.BytesIO()
        request["image"].convert("RGB").save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                 {"type": "text", "text": request["prompt"]}]}]
        return self.client.chat(messages, max_tokens=self.max_new_tokens, temperature=0.0).text.strip()

    def caption(self, requests: list[dict]) -> list[str]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max(1, min(self.max_concurrency, len(requests)))) as pool:
            return list(pool.map(self.ask, requests))

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
