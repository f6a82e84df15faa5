"""`RegionProcessor`: everything that turns an image, its regions and a conversation into model inputs, and
generated ids back into text — one object, built by training and by `RegionChat`, saved in the export's card.

    image + regions ─ ImageProcessor (pad/resize, normalise; masks and boxes in the same transform) ─┐
    conversation ─ chat template (regionvlm.text.templates) ─ tokenizer ─ Collator ─────────────────┴─▶ Batch

Its parts: the tokenizer (saved as files beside the card), the image settings (``image_size``, ``mean``,
``std``, ``resize_mode``), the chat ``template``, the context length ``max_length`` and the token counts the
placeholders expand to (``num_image_tokens`` for ``<image>``, ``tokens_per_region`` for each ``<regionK>``),
which are the model's. Like a transformers processor saved beside its weights, `to_card` writes these settings
to the card's ``processor:`` section and `from_card` reads them back, so inference renders every prompt exactly
as training did.

In a training config the processor's settings are the ``data:`` keys of `DATA_KEYS` (``template``,
``max_length``, and ``processor:`` for the image options); the image size and statistics and the token counts
come from the built model (`from_training_config`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from regionvlm.errors import ConfigError, UserError

#: keys of the ``data:`` section that configure the processor (every other ``data:`` key is the loaders')
DATA_KEYS = ("template", "max_length", "processor")
#: image options a config may set under ``data.processor`` (the size and statistics are the vision encoder's)
IMAGE_OPTIONS = ("resize_mode",)
#: what the card's ``processor:`` section holds
CARD_KEYS = ("image_size", "mean", "std", "resize_mode", "template", "max_length", "num_image_tokens",
             "tokens_per_region")
RE_EXPORT = "re-export it from its run with 'regionvlm export RUN_DIR --out DIR'"


def check_data_settings(data_cfg: Mapping[str, Any]) -> dict:
    """The processor's settings from a ``data:`` section (defaults filled), checked: an unknown template or image
    option, or a wrong type, is one `ConfigError` naming the key. Nothing is built (what ``regionvlm config``
    runs)."""
    from regionvlm.text.templates import check_template

    template = check_template(data_cfg.get("template", "vicuna_v1"), "data.template")
    max_length = data_cfg.get("max_length", 2048)
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise ConfigError(f"data.max_length: expected a positive number of tokens or null, got {max_length!r}")
    image = data_cfg.get("processor") or {}
    if not isinstance(image, Mapping):
        raise ConfigError(f"data.processor: expected a mapping of image options, got {image!r}")
    for key in image:
        if key in ("image_size", "mean", "std"):  # the vision encoder's
            raise ConfigError(f"data.processor.{key}: is set by the code at build time; remove it from the config")
        if key not in IMAGE_OPTIONS:
            from regionvlm.registry import _did_you_mean

            raise ConfigError(f"data.processor.{key}: unexpected key for the image processor"
                              f"{_did_you_mean(key, IMAGE_OPTIONS)} known: {', '.join(IMAGE_OPTIONS)}")
    if image.get("resize_mode", "pad") not in ("pad", "resize"):
        raise ConfigError(f"data.processor.resize_mode: expected 'pad' or 'resize', got {image['resize_mode']!r}")
    return {"template": template, "max_length": max_length, "resize_mode": image.get("resize_mode", "pad")}


class RegionProcessor:
    """Image processing + tokenizer + chat template + context length + placeholder token counts."""

    def __init__(self, tokenizer: Any, image_size: int, mean: Sequence[float], std: Sequence[float],
                 num_image_tokens: int, tokens_per_region: int = 1, resize_mode: str = "pad",
                 template: str = "vicuna_v1", max_length: int | None = 2048):
        from regionvlm.data.processing import ImageProcessor
        from regionvlm.text.templates import check_template

        self.tokenizer = tokenizer
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]  # as given (the card's values)
        self.image = ImageProcessor(image_size, self.mean, self.std, resize_mode)
        self.template = check_template(template)
        self.max_length = None if max_length is None else int(max_length)
        self.num_image_tokens, self.tokens_per_region = int(num_image_tokens), int(tokens_per_region)

    def __repr__(self) -> str:
        return (f"RegionProcessor(image_size={self.image.image_size}, resize_mode={self.image.resize_mode!r}, "
                f"template={self.template!r}, max_length={self.max_length}, "
                f"num_image_tokens={self.num_image_tokens}, tokens_per_region={self.tokens_per_region})")

    # -- building ------------------------------------------------------------------------------------------
    @classmethod
    def for_model(cls, model: Any, tokenizer: Any, **settings: Any) -> RegionProcessor:
        """The processor of a built `RegionVLM`: image size, statistics and token counts read off the model,
        ``settings`` (template, max_length, resize_mode) as given."""
        return cls(tokenizer, image_size=model.image_size, mean=model.image_mean, std=model.image_std,
                   num_image_tokens=model.num_image_tokens, tokens_per_region=model.tokens_per_region, **settings)

    @classmethod
    def from_training_config(cls, data_cfg: Mapping[str, Any] | None, model: Any, tokenizer: Any) -> RegionProcessor:
        """The processor a training config's ``data:`` section gives ``model`` (what training uses, and what its
        export's card records)."""
        return cls.for_model(model, tokenizer, **check_data_settings(data_cfg or {}))

    def to_card(self) -> dict:
        """The card's ``processor:`` section (plain YAML values; the tokenizer is saved as files beside it)."""
        return {"image_size": self.image.image_size, "mean": list(self.mean), "std": list(self.std),
                "resize_mode": self.image.resize_mode,
                "template": self.template, "max_length": self.max_length,
                "num_image_tokens": self.num_image_tokens, "tokens_per_region": self.tokens_per_region}

    @classmethod
    def from_card(cls, card: Mapping[str, Any], tokenizer: Any, model: Any = None,
                  source: str = "the card") -> RegionProcessor:
        """The processor a card describes. Cards written before the processor was one object keep the image
        settings in ``processor:`` and the template and context length in ``text:``, and no token counts: those
        load, the counts read off ``model``. Counts that disagree with ``model``'s are refused (one line)."""
        section = {**(card.get("text") or {}), **(card.get("processor") or {})}
        unknown = [k for k in section if k not in CARD_KEYS]
        if unknown:
            raise UserError(f"{source}: processor.{unknown[0]}: unknown setting; {RE_EXPORT}")
        for key in ("num_image_tokens", "tokens_per_region"):
            own = getattr(model, key, None) if model is not None else None
            if key not in section:
                if own is None:
                    raise UserError(f"{source}: processor.{key}: missing; {RE_EXPORT}")
                section[key] = own
            elif own is not None and int(section[key]) != int(own):
                raise UserError(f"{source}: processor.{key} is {section[key]} but the model's is {own}; {RE_EXPORT}")
        try:
            return cls(tokenizer, **section)
        except TypeError as exc:
            raise UserError(f"{source}: processor: {exc}; {RE_EXPORT}") from None
        except ConfigError as exc:
            raise UserError(f"{source}: processor.{exc}") from None

    # -- using ---------------------------------------------------------------------------------------------
    def collator(self, for_generation: bool = False, padding_side: str = "right", pack: bool = False,
                 process: bool = False):
        """A `Collator` over this processor's tokenizer, template, context length and token counts.
        ``process=True``: it also decodes and processes raw samples (inference); otherwise samples arrive
        processed (training's and evaluation's loaders process them in their workers)."""
        from regionvlm.data.collate import Collator

        return Collator(self.tokenizer, self.num_image_tokens, self.tokens_per_region, template=self.template,
                        max_length=self.max_length, padding_side=padding_side, for_generation=for_generation,
                        processor=self.image if process else None, pack=pack)

    def process_sample(self, sample: dict) -> dict:
        """A raw sample with its image decoded and processed (`ImageProcessor.process_sample`)."""
        return self.image.process_sample(sample)

    def prompt_length(self, conversations: list, num_regions: int) -> int:
        """The generation prompt's length in tokens as the model reads it (chat template rendered, ``<image>`` and
        ``<regionK>`` expanded); a prompt longer than ``max_length`` or naming a region it lacks is a `DataError`.
        What `serve` checks in the request's own thread, before the question is queued."""
        from regionvlm.errors import DataError

        if getattr(self, "_counter", None) is None:
            self._counter = self.collator(for_generation=True)
            self._counter.max_length = None  # measured here, refused below (the collator would drop it silently)
        sample = {"id": "request", "conversations": conversations, "region_masks": [None] * num_regions}
        length = len(self._counter._encode([sample])[0]["ids"])
        if self.max_length is not None and length > self.max_length:
            raise DataError(f"the prompt is {length} tokens; it does not fit the model's context "
                            f"(max_length={self.max_length})")
        return length

    def copy(self) -> RegionProcessor:
        """This processor with a tokenizer of its own, for another thread (fast tokenizers must not be shared
        across threads)."""
        import copy

        twin = copy.copy(self)
        twin.tokenizer, twin._counter = copy.deepcopy(self.tokenizer), None
        return twin

    def decode(self, ids: Any) -> list[str]:
        """Generated ids (B×T) → answers, special tokens dropped, whitespace stripped."""
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def stream_decode(self, id_chunks: Iterable[Sequence[int]], decode: Any = None) -> Iterator[str]:
        """Generated ids arriving in chunks (a streamed answer) → text pieces whose concatenation is exactly
        `decode` of all the ids: each piece is what the decoded text grew by, held back while it ends in a
        partial character (decoded as U+FFFD) — both engines stream through here. ``decode``: another function
        of the same effect (serve's, which lends a thread its own tokenizer for each call)."""
        decode = decode or self.decode
        ids: list[int] = []
        said = ""
        for chunk in id_chunks:
            ids += [int(i) for i in chunk]
            text = decode([ids])[0]
            if len(text) > len(said) and text.startswith(said) and not text.endswith("\ufffd"):
                yield text[len(said):]
                said = text
        text = decode([ids])[0]
        if text != said:
            if not text.startswith(said):  # decoding changed what was said (rare): say the rest as it now reads
                raise RuntimeError(f"stream_decode: the decoded answer {text!r} does not extend {said!r}")
            yield text[len(said):]
