"""What each kind of model component promises the rest of the model: one `typing.Protocol` per registry kind.

`RegionVLM` wires components together through these attributes only (``out_channels`` sizes the next
component, ``tokens_per_region`` and ``grid_size`` size the prompt's placeholders, ``image_size``/mean/std
configure the image processor). `regionvlm.registry.Registry.build` checks the built object against its kind's
contract, so a plugin that forgets one is reported where it is built, naming the attribute, instead of failing
later inside ``forward``.

Also here, the whole vocabulary of the ``model:`` node (`MODEL_COMPONENTS`, `MODEL_SETTINGS`, `ENGINE_KEYS`:
`MODEL_KEYS` is every key it may hold), `RUNTIME_KEYS` (what the model builder passes each kind at build time,
never set in a config) and `GENERATION_KEYS` (the decoding settings every generating path accepts).
No torch import: the CLI reads this module before anything heavy.
"""

from __future__ import annotations

import collections.abc
import typing
from collections.abc import Callable
from typing import Any, Protocol


class VisionEncoder(Protocol):
    """``forward(pixel_values B×3×S×S) → B×C×H×W`` features."""

    out_channels: int  # C
    image_size: int  # S: the processor resizes images to S×S
    grid_size: tuple[int, int]  # (H, W) of the feature map
    image_mean: tuple[float, ...]  # the processor's normalisation
    image_std: tuple[float, ...]


class FeatureRefiner(Protocol):
    """Built with runtime ``in_channels``; ``forward(B×C×H×W) → B×C'×H'×W'``."""

    out_channels: int  # C'


class RegionExtractor(Protocol):
    """Built with runtime ``in_channels`` and ``image_size``; ``forward(features B×C×H×W, masks R×S×S bool,
    boxes R×4, image_index R) → R×k×C_r`` (or R×C_r when k = 1). The masks arrive at the processed image size as
    bool (a quarter of float32's memory); the extractor resizes them to its grid in the features' dtype."""

    out_channels: int  # C_r
    tokens_per_region: int  # k: each <regionK> placeholder expands to k tokens


class Projector(Protocol):
    """Built with runtime ``in_channels`` and ``out_channels`` (the LLM's hidden size); ``...×C → ...×D``."""

    out_channels: int


class LLM(Protocol):
    """Built with runtime ``vocab_size``; reads ``inputs_embeds`` in ``forward`` and ``generate``."""

    hidden_size: int
    get_input_embeddings: Callable[[], Any]
    generate: Callable[..., Any]


class Head(Protocol):
    """``forward(logits, labels, hidden_states=None, shifted=False) → {"loss": scalar, ...}``. A head may set a
    class attribute ``needs_hidden_states = True`` to receive the LLM's last hidden states."""

    forward: Callable[..., Any]


class Captioner(Protocol):
    """``regionvlm datagen``'s captioner: ``caption(requests) → one string per request``, where a request is
    ``{"image": PIL image, "prompt": str, "regions": Regions | None (in the image's frame), "stage": "global" |
    "region", "class_name": str | None, "global_caption": str | None}``; an optional ``to(device)`` moves it."""

    caption: Callable[..., Any]


#: model component kind → the contract its built components must meet (`Captioner` is given to its registry directly)
CONTRACTS: dict[str, type] = {"vision_encoder": VisionEncoder, "feature_refiner": FeatureRefiner,
                              "region_extractor": RegionExtractor, "projector": Projector, "llm": LLM, "head": Head}

#: ``model:`` node key → registry kind of the component it names
MODEL_COMPONENTS: dict[str, str] = {"vision_encoder": "vision_encoder", "feature_refiner": "feature_refiner",
                                    "region_extractor": "region_extractor", "projector": "projector",
                                    "region_projector": "projector", "llm": "llm", "head": "head"}

#: ``model:`` node keys that are settings of the composed model, not components
MODEL_SETTINGS: tuple[str, ...] = ("global_grid", "share_projector")
#: ``model:`` node keys that belong to the training engine (what trains, where a stage starts), not to the architecture
ENGINE_KEYS: tuple[str, ...] = ("init_from", "init_components", "trainable", "freeze")
#: every key a ``model:`` node may hold
MODEL_KEYS: tuple[str, ...] = (*MODEL_COMPONENTS, *MODEL_SETTINGS, *ENGINE_KEYS)
#: decoding settings (the ``generation:`` section, a card's, per-call arguments of RegionChat, predict and serve)
GENERATION_KEYS: tuple[str, ...] = ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_p")

#: registry kind → the constructor arguments the model builder supplies (a config must not set them)
RUNTIME_KEYS: dict[str, tuple[str, ...]] = {"vision_encoder": (), "feature_refiner": ("in_channels",),
                                            "region_extractor": ("in_channels", "image_size"),
                                            "projector": ("in_channels", "out_channels"), "llm": ("vocab_size",),
                                            "head": ()}


def _matches(value: Any, expected: Any) -> bool:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is Any:
        return True
    if origin is tuple:  # lists are accepted: what matters is the length and the items
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    if origin is collections.abc.Callable:
        return callable(value)
    return isinstance(value, expected)


def _describe(expected: Any) -> str:
    origin = typing.get_origin(expected)
    if origin is collections.abc.Callable:
        return "a method"
    return str(expected) if origin is not None else expected.__name__


def contract_violation(obj: Any, contract: type) -> str | None:
    """The first attribute of ``contract`` that ``obj`` lacks or has with the wrong type, as a phrase
    (``"attribute 'out_channels' is missing (expected int)"``), or None when ``obj`` meets it."""
    hints = typing.get_type_hints(contract)
    for name, expected in hints.items():
        if not hasattr(obj, name):
            return f"attribute '{name}' is missing (expected {_describe(expected)})"
        value = getattr(obj, name)
        if not _matches(value, expected):
            return f"attribute '{name}' is {value!r} (expected {_describe(expected)})"
    return None
