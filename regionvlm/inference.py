"""Ask a trained region model about regions of your images, from Python.

    from regionvlm import RegionChat
    chat = RegionChat.from_pretrained("runs/rgpt-tiny-stage2/export")     # offline, from the folder alone
    chat.ask("photo.jpg", regions=[[10, 20, 120, 200]], prompt="What is <region1>?")
    chat.classify("photo.jpg", [[10, 20, 120, 200]])                     # task-guided prompts
    chat.caption("photo.jpg", [mask], detailed=True)
    chat.refer("photo.jpg", "the red circle", candidates=[box1, box2])    # → index of the chosen candidate

Regions may be xyxy boxes (4 numbers), masks (H×W arrays or PIL pictures: non-zero = inside; alpha, when
present, is the mask), polygons (``[[x1, y1, x2, y2, ...], ...]``), COCO RLE dicts (``{"size": [h, w],
"counts": ...}``) or the command line's strings (``"box:10,20,120,200"``, ``"mask:cat.png"``): one parser,
`regionvlm.data.region_input.parse_region`. Images may be paths, PIL images or H×W×3 arrays.

This path imports no training code (no Lightning): a serving process starts lean.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from regionvlm.contracts import GENERATION_KEYS
from regionvlm.data.region_input import parse_regions
from regionvlm.data.structures import Regions
from regionvlm.errors import DataError


class RegionChat:
    """A loaded model with its processor (tokenizer, image processing, chat template): text in, text out."""

    def __init__(self, model: Any, tokenizer: Any, card: dict, device: str | None = None):
        """``card``: the export's card (or a training config, turned into its card)."""
        import torch

        from regionvlm.card import as_model_card
        from regionvlm.processor import RegionProcessor

        self.model, self.tokenizer = model.eval(), tokenizer
        self.card = as_model_card(card, model, tokenizer)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.processor = RegionProcessor.from_card(self.card, tokenizer, model)
        self.collator = self.processor.collator(for_generation=True, process=True)
        self.generation = dict(self.card.get("generation") or {})
        self.engine = None  # None: the built-in engine (transformers' generate); see `use_vllm`

    @classmethod
    def from_pretrained(cls, export_dir: str | os.PathLike, device: str | None = None,
                        imports: bool = False) -> RegionChat:
        """Model, tokenizer, processing, chat template and task prompts, all read from the export folder.
        ``imports=True`` imports the modules that registered the model's own components (the card's
        ``imports:``; importing runs their code: for exports you trust; `regionvlm.card.load_export`)."""
        from regionvlm.card import load_export

        model, tokenizer, card = load_export(export_dir, imports=imports)
        return cls(model, tokenizer, card, device=device)

    # -- asking -------------------------------------------------------------------------------------------
    def sample(self, image: Any, regions: Any = None, prompt: str = "", sample_id: str = "0") -> dict:
        """The raw sample for one question (``<image>`` is prepended unless the prompt places it)."""
        value = prompt if "<image>" in prompt else f"<image>\n{prompt}"
        return {"id": sample_id, "image": image, "regions": parse_regions(regions),
                "conversations": [{"from": "human", "value": value}]}

    def settings(self, **generation: Any) -> dict:
        """The decoding settings of a call: the card's, with ``generation`` on top (`GENERATION_KEYS` only)."""
        return {k: v for k, v in {**self.generation, **generation}.items() if k in GENERATION_KEYS}

    def batch(self, samples: Sequence[dict]):
        """Raw samples → one left-padded generation `Batch` on the model's device (refused, one line, when a
        prompt does not fit the context)."""
        batch = self.collator(list(samples))
        if len(batch) != len(samples):
            raise DataError(f"{len(samples) - len(batch)} prompt(s) do not fit the model's context "
                            f"(max_length={self.processor.max_length})")
        return batch.to(self.device)

    def generate_ids(self, samples: Sequence[dict], **generation: Any) -> list[list[int]]:
        """Each answer's new token ids, up to and including its end token (no end token: it ran to
        ``max_new_tokens``). Batched: one forward of the vision tower, one generate call; with vLLM, the
        requests go to vLLM together."""
        import torch

        if self.engine is not None:
            return self.engine.generate_ids(samples, **generation)
        batch = self.batch(samples)
        with torch.inference_mode():
            ids = self.model.generate(batch, **self.settings(**generation))
        return [self.until_end(row) for row in ids.tolist()]

    def generate(self, samples: Sequence[dict], **generation: Any) -> list[str]:
        """Answers for raw samples, batched (`generate_ids`, decoded)."""
        return self.processor.decode(self.generate_ids(samples, **generation))

    def until_end(self, ids: Sequence[int]) -> list[int]:
        """``ids`` up to and including the first end token (what follows it is padding)."""
        ids = [int(i) for i in ids]
        return next((ids[: k + 1] for k, i in enumerate(ids) if i in self.end_ids), ids)

    def is_end(self, ids: Sequence[int]) -> bool:
        """Whether ``ids`` (an answer so far) ends with an end token."""
        return bool(ids) and int(ids[-1]) in self.end_ids

    @property
    def end_ids(self) -> set[int]:
        ends = self.model.eos_token_id
        return set(ends) if isinstance(ends, (list, tuple)) else {ends}

    def prompt_embeddings(self, samples: Sequence[dict]) -> list:
        """Each sample's input embeddings (L_i×D, its prompt's own tokens: the image and region features fused
        in, the batch's left padding taken off) — what the vLLM engine sends as prompt embeddings."""
        import torch

        batch = self.batch(samples)
        with torch.inference_mode():
            embeds = self.model.embed(batch)
        keep = batch.attention_mask.bool()
        return [embeds[b, keep[b]].detach().cpu() for b in range(len(batch))]

    def stream(self, image: Any, regions: Any = None, prompt: str = "", **generation: Any) -> Iterator[str]:
        """The answer to one question as it is generated: text pieces whose concatenation is `ask`'s answer."""
        yield from self.processor.stream_decode(self.stream_ids(self.sample(image, regions, prompt), **generation))

    def stream_ids(self, sample: dict, **generation: Any) -> Iterator[list[int]]:
        """One raw sample's new token ids in chunks, as they are generated (the built-in engine: `stream_batch`
        of one; vLLM: from its server-sent events)."""
        if self.engine is not None:
            yield from self.engine.stream_ids(sample, **generation)
            return
        for step in self.stream_batch([sample], **generation):
            if step[0]:
                yield step[0]

    def stream_batch(self, samples: Sequence[dict], **generation: Any) -> Iterator[list[list[int]]]:
        """The built-in engine's answers to a batch, step by step as ``generate`` makes them (in a thread of its
        own, through a streamer): per step, each sample's new ids, up to and including its end token (``[]``
        once it has ended). What `serve` streams concurrent questions with: one ``generate`` call for all."""
        import queue
        import threading

        import torch
        from transformers.generation.streamers import BaseStreamer

        settings = self.settings(**generation)
        if int(settings.get("num_beams", 1) or 1) > 1:
            raise DataError("streaming: num_beams > 1 (beam search) cannot stream; ask without streaming")
        steps: queue.Queue = queue.Queue()

        class Steps(BaseStreamer):
            prompt_seen = False

            def put(self, value):
                if not self.prompt_seen:  # generate's first call hands over the prompt (empty for embeddings)
                    self.prompt_seen = True
                    return
                steps.put(value.reshape(len(samples), -1).tolist())

            def end(self):
                steps.put(None)

        batch = self.batch(samples)
        failure: list[BaseException] = []

        def run():
            try:
                with torch.inference_mode():
                    self.model.generate(batch, streamer=Steps(), **settings)
            except BaseException as exc:  # raised in the caller's thread, below
                failure.append(exc)
                steps.put(None)

        worker = threading.Thread(target=run, name="regionvlm-stream", daemon=True)
        worker.start()
        ended = [False] * len(samples)
        while (step := steps.get()) is not None:
            out = []
            for b, ids in enumerate(step):
                kept = [] if ended[b] else self.until_end(ids)
                ended[b] = ended[b] or len(kept) < len(ids) or self.is_end(kept)
                out.append(kept)
            yield out
        worker.join()
        if failure:
            raise failure[0]

    # -- engines ------------------------------------------------------------------------------------------
    def use_vllm(self, export_dir: str | os.PathLike | None = None, url: str | None = None,
                 api_key: str | None = None, python: str | os.PathLike | None = None, **server_options: Any):
        """Generate through vLLM from now on (`regionvlm.vllm_engine.VLLMEngine`): connect to a running server
        at ``url``, or start one on ``export_dir``'s LLM folder in the Python environment ``python``. `close`
        (or leaving a ``with`` block) stops a server started here. Returns self."""
        from regionvlm.vllm_engine import VLLMEngine

        self.close()
        if url:
            self.engine = VLLMEngine.connect(self, url, api_key=api_key)
        elif export_dir is not None:
            self.engine = VLLMEngine.launch(self, export_dir, python=python, api_key=api_key, **server_options)
        else:
            raise ValueError("use_vllm: give the url of a running vLLM server or the export folder to start one on")
        return self

    def close(self) -> None:
        """Stop what this chat started (a vLLM child process); the built-in engine holds nothing."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def __enter__(self) -> RegionChat:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def ask(self, image: Any, regions: Any = None, prompt: str = "", **generation: Any) -> str:
        """The model's answer to ``prompt`` about ``regions`` (``<regionK>`` names regions[K-1])."""
        return self.generate([self.sample(image, regions, prompt)], **generation)[0]

    def ask_batch(self, items: Iterable[dict], batch_size: int = 8, **generation: Any) -> list[str]:
        """Many ``{"image", "regions", "prompt"}`` items, answered ``batch_size`` at a time."""
        samples = [self.sample(it["image"], it.get("regions"), it["prompt"], str(i)) for i, it in enumerate(items)]
        out: list[str] = []
        for start in range(0, len(samples), batch_size):
            out += self.generate(samples[start:start + batch_size], **generation)
        return out

    # -- task shortcuts (the registered task-guided prompts, evaluation phrasing) --------------------------
    def task_question(self, prompt_type: str, **fields: Any) -> str:
        """The evaluation phrasing of a registered prompt, configured as the model was trained with it (the
        card's ``prompts:``: same vocabulary and guidance), else with the prompt's defaults."""
        from regionvlm.registry import PROMPTS

        node = self.card["prompts"].get(prompt_type) or {"type": prompt_type}
        return PROMPTS.build(node, key_path=f"prompts.{prompt_type}").build(**fields)[0]["value"]

    def _per_region(self, image: Any, regions: Any, question: str, **generation: Any) -> list[str]:
        items = [{"image": image, "regions": Regions([r]), "prompt": question} for r in parse_regions(regions).items]
        return self.ask_batch(items, **generation)

    def classify(self, image: Any, regions: Any, **generation: Any) -> list[str]:
        """The class name of each region, one question per region."""
        return self._per_region(image, regions, self.task_question("region_classification"), **generation)

    def caption(self, image: Any, regions: Any, detailed: bool = False, **generation: Any) -> list[str]:
        """A brief (or detailed) caption of each region."""
        question = self.task_question("detailed_caption" if detailed else "brief_caption")
        return self._per_region(image, regions, question, **generation)

    def refer(self, image: Any, expression: str, candidates: Any, **generation: Any) -> int | None:
        """Index (0-based) of the candidate region the expression refers to, or None if the answer names none."""
        from regionvlm.text.prompts import parse_region_index

        candidates = parse_regions(candidates)
        question = self.task_question("rec", expression=expression, num_candidates=len(candidates))
        return parse_region_index(self.ask(image, candidates, question, **generation), len(candidates))
