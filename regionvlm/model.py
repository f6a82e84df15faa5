"""RegionVLM: the registered parts composed into one plain ``nn.Module`` (no Lightning, no tokenizer).

    pixel_values ─ vision_encoder ─ feature_refiner ─┬─ patch merge (adaptive avg pool to global_grid) ─ projector ─┐
                                                      └─ region_extractor(masks, boxes) ─ region projector ─────────┤
    input_ids ─ LLM input embeddings ──────────────────────────── fusion (masked_scatter at placeholders) ◀─────────┘
                                                                                   └─ llm ─ head → loss

Submodule names are the component names the engine freezes/trains by: ``vision_encoder``, ``feature_refiner``,
``region_extractor``, ``projector``, ``region_projector`` (None when ``share_projector: true``: the region
branch then uses ``projector``), ``llm``, ``head``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from regionvlm.batch import Batch
from regionvlm.contracts import ENGINE_KEYS, MODEL_KEYS
from regionvlm.errors import ConfigError, PluginError
from regionvlm.fusion import fuse, ignore_placeholder_labels
from regionvlm.registry import (
    FEATURE_REFINERS,
    HEADS,
    LLMS,
    PROJECTORS,
    REGION_EXTRACTORS,
    VISION_ENCODERS,
    to_plain,
)
from regionvlm.tokens import IGNORE_INDEX, IMAGE_TOKEN, REGION_TOKEN


class RegionVLM(nn.Module):
    """A region-level VLM: image tokens at ``<image>``, one (or k) region tokens at each ``<regionK>``."""

    def __init__(self, vision_encoder: nn.Module, feature_refiner: nn.Module, region_extractor: nn.Module,
                 projector: nn.Module, region_projector: nn.Module | None, llm: nn.Module, head: nn.Module,
                 image_token_id: int, region_token_id: int, global_grid: tuple[int, int] | None = None,
                 pad_token_id: int | None = None, eos_token_id: int | list[int] | None = None):
        super().__init__()
        self.vision_encoder = vision_encoder
        self.feature_refiner = feature_refiner
        self.region_extractor = region_extractor
        self.projector = projector
        self.region_projector = region_projector
        self.llm = llm
        self.head = head
        self.image_token_id = int(image_token_id)
        self.region_token_id = int(region_token_id)
        self.global_grid = tuple(global_grid) if global_grid is not None else tuple(vision_encoder.grid_size)
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id

    # -- what the data side needs --------------------------------------------------------------------------
    @property
    def num_image_tokens(self) -> int:
        return self.global_grid[0] * self.global_grid[1]

    @property
    def tokens_per_region(self) -> int:
        return int(self.region_extractor.tokens_per_region)

    @property
    def image_size(self) -> int:
        return int(self.vision_encoder.image_size)

    @property
    def image_mean(self) -> tuple[float, ...]:
        return tuple(self.vision_encoder.image_mean)

    @property
    def image_std(self) -> tuple[float, ...]:
        return tuple(self.vision_encoder.image_std)

    # -- forward -------------------------------------------------------------------------------------------
    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Image tokens B×N×D and region tokens R×k×D in the LLM's embedding space."""
        refined = self.feature_refiner(self.vision_encoder(batch.pixel_values))
        merged = refined
        if tuple(refined.shape[-2:]) != self.global_grid:
            merged = F.adaptive_avg_pool2d(refined, self.global_grid)
        image_tokens = self.projector(merged.flatten(2).transpose(1, 2))
        regions = self.region_extractor(refined, batch.region_masks, batch.region_boxes, batch.region_image_index)
        region_projector = self.region_projector if self.region_projector is not None else self.projector
        region_tokens = region_projector(regions)
        return image_tokens, region_tokens

    def embed(self, batch: Batch) -> torch.Tensor:
        """Token embeddings B×L×D with image and region features fused in at their placeholders."""
        image_tokens, region_tokens = self.encode(batch)
        embeds = self.llm.get_input_embeddings()(batch.input_ids)
        return fuse(embeds, batch.input_ids, self.image_token_id, image_tokens, self.region_token_id,
                    region_tokens, batch.region_mentions, region_image_index=batch.region_image_index,
                    sample_ids=None if batch.image_row_index is not None else (batch.ids or None),
                    image_row_index=batch.image_row_index)

    def forward(self, batch: Batch, all_logits: bool = False) -> dict[str, Any]:
        """``{"loss": scalar or None (no labels), "logits": ..., ...head outputs}``.

        With labels, the logits are computed only at the positions whose next token is scored (B×K×V, K = the
        union over the batch): the full B×L×V logits of a 32k-vocabulary LLM dominate training memory and time.
        ``all_logits=True`` (or a batch without labels) gives B×L×V.
        """
        embeds = self.embed(batch)
        need_hidden = bool(getattr(self.head, "needs_hidden_states", False))
        labels = keep = None
        if batch.labels is not None:
            labels = ignore_placeholder_labels(batch.labels, batch.input_ids,
                                               (self.image_token_id, self.region_token_id))
            if not (all_logits or need_hidden):
                keep = (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(1)
        extra: dict[str, Any] = {} if keep is None else {"logits_to_keep": keep}
        attention = batch.attention_mask
        if batch.segment_ids is not None or batch.turn_ids is not None:
            attention = structured_attention_mask(batch.attention_mask, batch.segment_ids, batch.turn_ids,
                                                  embeds.dtype)
        if batch.position_ids is not None:
            extra["position_ids"] = batch.position_ids
        out = self.llm(inputs_embeds=embeds, attention_mask=attention, output_hidden_states=need_hidden, **extra)
        result: dict[str, Any] = {"loss": None, "logits": out.logits}
        if labels is not None:
            hidden = out.hidden_states[-1] if need_hidden else None
            if keep is None:
                result.update(self.head(out.logits, labels, hidden_states=hidden))
            else:  # logits[:, j] predicts the token at keep[j] + 1
                result.update(self.head(out.logits, labels[:, keep + 1], hidden_states=hidden, shifted=True))
        return result

    @torch.no_grad()
    def generate(self, batch: Batch, max_new_tokens: int = 32, num_beams: int = 1, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, **kwargs: Any) -> torch.Tensor:
        """New token ids B×T (prompt excluded; padded with the pad id after EOS), using the LLM's KV cache.

        The batch must be left-padded (the last position of every row is a real token).
        """
        if not bool(batch.attention_mask[:, -1].all()):
            raise ValueError("generate needs a left-padded batch (prompts end at the last position); "
                             "set the collator's padding side to 'left' for generation")
        embeds = self.embed(batch)
        gen: dict[str, Any] = {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "do_sample": do_sample,
                               "pad_token_id": self.pad_token_id, "eos_token_id": self.eos_token_id}
        if do_sample:
            gen.update(temperature=temperature, top_p=top_p)
        gen.update(kwargs)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=batch.attention_mask, use_cache=True, **gen)


def structured_attention_mask(attention_mask: torch.Tensor, segment_ids: torch.Tensor | None,
                              turn_ids: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The additive B×1×L×L mask (0 = attend, dtype's min = not) for packed rows and independent turns: token i
    sees token j ≤ i of the same packed sample (``segment_ids``) that is either in the shared prefix (turn 0) or
    in i's own turn (``turn_ids``). Each packed sample / turn then computes exactly what it would alone (with
    the collator's restarted ``position_ids``). Every token sees itself, so no row is empty (no NaN at pads)."""
    length = attention_mask.shape[1]
    idx = torch.arange(length, device=attention_mask.device)
    allowed = (idx[None, :, None] >= idx[None, None, :]) & attention_mask.bool()[:, None, :]
    if segment_ids is not None:
        allowed &= segment_ids[:, :, None] == segment_ids[:, None, :]
    if turn_ids is not None:
        allowed &= (turn_ids[:, None, :] == 0) | (turn_ids[:, :, None] == turn_ids[:, None, :])
    allowed |= torch.eye(length, dtype=torch.bool, device=attention_mask.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def _grid(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise ConfigError(f"model.global_grid: expected an int, [h, w] or null, got {value!r}")


def _token_id(tokenizer: Any, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id or token not in tokenizer.get_vocab():
        raise ConfigError(f"model.llm: the tokenizer lacks the special token '{token}'; "
                          f"build it with regionvlm.plugins.llms.build_tokenizer")
    return int(token_id)


def _probe(component: nn.Module, *inputs: torch.Tensor) -> torch.Tensor | None:
    """``component(*inputs)`` without gradients, inputs cast to its parameters' device and float dtype; None on
    the meta device (`regionvlm plan` builds there: nothing to compute)."""
    param = next(component.parameters(), None)
    if (param is not None and param.is_meta) or any(x.is_meta for x in inputs):  # built under torch.device("meta")
        return None
    if param is not None:
        inputs = tuple(x.to(param.device, param.dtype if x.is_floating_point() else None) for x in inputs)
    with torch.no_grad():
        return component(*inputs)


def _declared(component: nn.Module, key: str, problem: str) -> PluginError:
    from regionvlm.registry import qualified_name

    return PluginError(f"{key}: {type(component).__name__} ({qualified_name(type(component))}) breaks its contract "
                       f"(regionvlm.contracts): {problem}")


def check_declared_shapes(vision: nn.Module, refiner: nn.Module, extractor: nn.Module, projectors: dict,
                          hidden_size: int) -> None:
    """One tiny forward of the refiner, the region extractor and the projectors, checked against what they
    declare (``out_channels``, ``tokens_per_region``) — the attributes that size the next component and the
    prompt's placeholders — so a component whose declaration is wrong is named where it is built, not at the
    first training step as a shape error inside another component."""
    h, w = (min(int(v), 4) for v in vision.grid_size)
    try:  # a refiner that needs the full grid is not probed at a small one (and is checked at its first batch)
        refined = _probe(refiner, torch.zeros(1, int(vision.out_channels), h, w))
    except Exception:
        refined = None
    if refined is not None and refined.shape[1] != refiner.out_channels:
        raise _declared(refiner, "model.feature_refiner",
                        f"declares out_channels {refiner.out_channels} but its forward gives {refined.shape[1]}")
    size = int(vision.image_size)
    features = torch.randn(1, int(refiner.out_channels), 4, 4, generator=torch.Generator().manual_seed(0))
    regions = _probe(extractor, features, torch.ones(1, size, size, dtype=torch.bool),
                     torch.tensor([[0.0, 0.0, float(size), float(size)]]), torch.zeros(1, dtype=torch.long))
    if regions is not None:
        k, channels = (1, regions.shape[-1]) if regions.dim() == 2 else tuple(regions.shape[1:])
        if channels != extractor.out_channels:
            raise _declared(extractor, "model.region_extractor",
                            f"declares out_channels {extractor.out_channels} but its forward gives {channels}")
        if regions.dim() not in (2, 3) or k != extractor.tokens_per_region:
            raise _declared(extractor, "model.region_extractor",
                            f"declares tokens_per_region {extractor.tokens_per_region} but its forward gives "
                            f"{tuple(regions.shape)} for one region (expected 1×k×C, k = tokens_per_region)")
    for key, (projector, in_channels) in projectors.items():
        out = _probe(projector, torch.zeros(1, int(in_channels)))
        if out is not None and out.shape[-1] != hidden_size:
            raise _declared(projector, key, f"maps {in_channels} channels to {out.shape[-1]}, but the LLM's "
                                            f"hidden size is {hidden_size}")


def build_model(model_cfg: Mapping[str, Any] | Any, tokenizer: Any) -> RegionVLM:
    """Build `RegionVLM` from a ``model:`` node (keys: `contracts.MODEL_KEYS`; the engine's keys are ignored).

    ``feature_refiner`` defaults to identity, ``head`` to lm, ``share_projector`` to true, ``global_grid`` to the
    encoder's grid; ``region_projector`` (a projector node, used when ``share_projector: false``) defaults to a
    copy of ``projector``'s node.
    """
    cfg = dict(to_plain(model_cfg) or {})
    unknown = [k for k in cfg if k not in MODEL_KEYS]
    if unknown:
        raise ConfigError(f"model.{unknown[0]}: unknown key; known: {', '.join(MODEL_KEYS)}")
    for key in ("vision_encoder", "region_extractor", "projector", "llm"):
        if cfg.get(key) is None:
            raise ConfigError(f"model.{key}: required")
    share = cfg.get("share_projector", True)
    if not isinstance(share, bool):
        raise ConfigError(f"model.share_projector: expected true or false, got {share!r}")
    if share and cfg.get("region_projector") is not None:
        raise ConfigError("model.region_projector: set only with share_projector: false")

    vision = VISION_ENCODERS.build(cfg["vision_encoder"], key_path="model.vision_encoder")
    refiner = FEATURE_REFINERS.build(cfg.get("feature_refiner") or {"type": "identity"},
                                     key_path="model.feature_refiner", in_channels=vision.out_channels)
    extractor = REGION_EXTRACTORS.build(cfg["region_extractor"], key_path="model.region_extractor",
                                        in_channels=refiner.out_channels, image_size=vision.image_size)
    llm = LLMS.build(cfg["llm"], key_path="model.llm", vocab_size=len(tokenizer))
    projector = PROJECTORS.build(cfg["projector"], key_path="model.projector",
                                 in_channels=refiner.out_channels, out_channels=llm.hidden_size)
    projectors = {"model.projector": (projector, refiner.out_channels)}
    region_projector = None
    if not share:
        region_projector = PROJECTORS.build(cfg.get("region_projector") or cfg["projector"],
                                            key_path="model.region_projector",
                                            in_channels=extractor.out_channels, out_channels=llm.hidden_size)
        projectors["model.region_projector"] = (region_projector, extractor.out_channels)
    check_declared_shapes(vision, refiner, extractor, projectors, int(llm.hidden_size))
    if share and extractor.out_channels != refiner.out_channels:  # declarations are true: a configuration choice
        raise ConfigError(f"model.share_projector: the region extractor gives {extractor.out_channels} channels "
                          f"but the image branch {refiner.out_channels}; set share_projector: false")
    head = HEADS.build(cfg.get("head") or {"type": "lm"}, key_path="model.head")
    return RegionVLM(vision, refiner, extractor, projector, region_projector, llm, head,
                     image_token_id=_token_id(tokenizer, IMAGE_TOKEN),
                     region_token_id=_token_id(tokenizer, REGION_TOKEN),
                     global_grid=_grid(cfg.get("global_grid")), pad_token_id=tokenizer.pad_token_id,
                     eos_token_id=tokenizer.eos_token_id)


def architecture_config(model_cfg: Mapping[str, Any], model: RegionVLM) -> dict:
    """The ``model:`` node of a built model rewritten so that building it reads no external weights (what an
    export's card and a checkpoint store): each component's ``architecture_node(node)`` says how (a transformers
    component gives its full config instead of ``pretrained``, timm's ``pretrained: true`` becomes false; the
    same ``weightless_node`` rewrite `regionvlm plan` applies before building). A component without it that wraps
    a transformers model (``.model.config``) gets that config instead of ``pretrained``."""
    cfg = {k: copy.deepcopy(v) for k, v in dict(model_cfg).items() if k not in ENGINE_KEYS}
    for name, child in model.named_children():
        node = cfg.get(name)
        if not isinstance(node, dict):
            continue
        if hasattr(child, "architecture_node"):
            cfg[name] = child.architecture_node(dict(node))
        elif node.get("pretrained") and hasattr(getattr(child, "model", None), "config"):
            cfg[name] = {**{k: v for k, v in node.items() if k != "pretrained"},
                         "config": child.model.config.to_dict()}
    return cfg
