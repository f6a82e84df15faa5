"""Vision encoders: pixels → a B×C×h×w feature map.

Contract (docs/architecture.md): ``forward(pixel_values B×3×S×S) → B×C×h×w`` and the attributes
``out_channels`` (C), ``grid_size`` ((h, w)), ``image_size`` (S), ``image_mean``, ``image_std`` (what the data
side's ImageProcessor normalises with). Heavy libraries are imported inside the components.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch
from torch import nn

from regionvlm.errors import ConfigError
from regionvlm.image_stats import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, SIGLIP_MEAN, SIGLIP_STD
from regionvlm.registry import VISION_ENCODERS


def _dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ConfigError(f"dtype: unknown dtype '{name}'; known: {', '.join(table)}")
    return table[name]


def _preprocessor_stats(pretrained: str, default_mean, default_std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """image_mean / image_std from the checkpoint's ``preprocessor_config.json`` when it has one."""
    from transformers.utils import cached_file

    try:
        path = cached_file(pretrained, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
    except (OSError, ValueError):  # no preprocessor file reachable: the family's defaults are the documented fallback
        path = None
    if not path:
        return tuple(default_mean), tuple(default_std)
    with open(path) as f:
        cfg = json.load(f)
    return tuple(cfg.get("image_mean", default_mean)), tuple(cfg.get("image_std", default_std))


def _check_loading(info: dict[str, Any], what: str, key_path: str) -> None:
    missing = info.get("missing_keys") or []
    if missing:
        raise ConfigError(
            f"{key_path}.pretrained: checkpoint for {what} lacks {len(missing)} weights "
            f"(e.g. {', '.join(sorted(missing)[:3])})"
        )


class _HFVisionEncoder(nn.Module):
    """Shared code of the transformers ViT encoders (CLIP, SigLIP): hidden state of ``select_layer``."""

    model_class: str = ""
    config_class: str = ""
    # modules whose output the feature map never reaches (they act on the pooled output only)
    pooling_modules: tuple[str, ...] = ("post_layernorm",)
    default_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    default_std: tuple[float, ...] = OPENAI_CLIP_STD
    has_cls_token: bool = True

    def __init__(self, pretrained: str | None = None, config: dict | None = None, select_layer: int = -2,
                 select_feature: str = "patch", dtype: str | None = None, drop_unused_layers: bool = True,
                 image_mean: list[float] | None = None, image_std: list[float] | None = None):
        super().__init__()
        import transformers

        key_path = f"model.vision_encoder ({type(self).__name__})"
        if (pretrained is None) == (config is None):
            raise ConfigError(f"{key_path}: give exactly one of 'pretrained' (hub id or local dir) or 'config'")
        if select_feature not in ("patch", "cls_patch"):
            raise ConfigError(f"{key_path}.select_feature: expected 'patch' or 'cls_patch', got '{select_feature}'")
        if select_feature == "cls_patch" and not self.has_cls_token:
            raise ConfigError(f"{key_path}.select_feature: this encoder has no CLS token; use 'patch'")
        model_cls = getattr(transformers, self.model_class)
        if pretrained is not None:
            model, info = model_cls.from_pretrained(pretrained, dtype=_dtype(dtype) or torch.float32,
                                                    output_loading_info=True)
            _check_loading(info, self.model_class, "model.vision_encoder")
            mean, std = _preprocessor_stats(pretrained, self.default_mean, self.default_std)
        else:
            cfg = getattr(transformers, self.config_class)(**config)
            model = model_cls(cfg)
            if dtype is not None:
                model = model.to(_dtype(dtype))
            mean, std = self.default_mean, self.default_std
        cfg = model.config
        n_layers = cfg.num_hidden_layers
        # hidden_states[k] is the output after k layers (hidden_states[0] = embeddings)
        keep = n_layers + 1 + select_layer if select_layer < 0 else select_layer
        if not 0 <= keep <= n_layers:
            raise ConfigError(f"{key_path}.select_layer: {select_layer} is out of range for {n_layers} layers")
        self.keep_layers = keep
        if drop_unused_layers and keep < n_layers:
            # Layers after the selected one never influence the output: dropping them saves their compute and
            # leaves no parameter without a gradient (which DDP would reject when the encoder trains).
            layers = self._layer_list(model, n_layers)
            del layers[keep:]
        if drop_unused_layers:
            # Same for the pooling modules. They are replaced only after loading, so a pretrained checkpoint
            # must still provide their weights (the strict check above covers them).
            # (looked up by attribute name: transformers versions nest them differently)
            pooling = [name for name, _ in model.named_modules()
                       if name.rpartition(".")[2] in self.pooling_modules and ".layers." not in f".{name}."]
            for name in pooling:
                model.set_submodule(name, nn.Identity())
        self.model = model
        self.select_feature = select_feature
        self.image_size = int(cfg.image_size)
        patch = int(cfg.patch_size)
        self.grid_size = (self.image_size // patch, self.image_size // patch)
        self.out_channels = int(cfg.hidden_size)
        self.image_mean = tuple(float(x) for x in (image_mean or mean))
        self.image_std = tuple(float(x) for x in (image_std or std))

    @classmethod
    def weightless_node(cls, node: dict, read_config) -> dict:
        """The node without weights: the checkpoint's config (``read_config()``) instead of ``pretrained``."""
        if not node.get("pretrained"):
            return node
        node = {k: v for k, v in node.items() if k != "pretrained"}
        node["config"] = read_config()
        return node

    def architecture_node(self, node: dict) -> dict:
        """The export's node: the full config, and the normalisation read from the checkpoint's preprocessor
        file (a config-built encoder would otherwise fall back to the family's defaults)."""
        node = self.weightless_node(node, lambda: self.model.config.to_dict())
        return {**node, "image_mean": list(self.image_mean), "image_std": list(self.image_std)}

    @staticmethod
    def _layer_list(model: nn.Module, n_layers: int) -> nn.ModuleList:
        for module in model.modules():  # structural lookup: the encoder's stack of transformer blocks
            if isinstance(module, nn.ModuleList) and len(module) == n_layers:
                return module
        raise RuntimeError(f"could not find the {n_layers} encoder layers of {type(model).__name__}")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values, output_hidden_states=True)
        hidden = out.hidden_states[self.keep_layers]
        h, w = self.grid_size
        prefix = hidden.shape[1] - h * w
        if self.select_feature == "cls_patch":
            # CLS token added to every patch: a global context term keeps the map's B×C×h×w shape
            hidden = hidden[:, prefix:] + hidden[:, :1]
        else:
            hidden = hidden[:, prefix:]
        b, _, c = hidden.shape
        return hidden.transpose(1, 2).reshape(b, c, h, w)


@VISION_ENCODERS.register("hf_clip")
class HFCLIPVisionEncoder(_HFVisionEncoder):
    """CLIP ViT (transformers CLIPVisionModel): pretrained hub id / local dir or random-init config.

    Options: ``pretrained`` or ``config`` (a CLIPVisionConfig dict), ``select_layer`` (default -2, the
    penultimate layer as in LLaVA/RGPT), ``select_feature`` (``patch`` | ``cls_patch``), ``dtype``,
    ``drop_unused_layers`` (default true: layers after ``select_layer`` and the pooled output's post-layernorm
    are removed, so every parameter left reaches the features), ``image_mean``/``image_std``
    (override; otherwise from the checkpoint's preprocessor_config.json, else CLIP's defaults).
    """

    model_class = "CLIPVisionModel"
    config_class = "CLIPVisionConfig"


@VISION_ENCODERS.register("hf_siglip")
class HFSiglipVisionEncoder(_HFVisionEncoder):
    """SigLIP ViT (transformers SiglipVisionModel): same options as hf_clip (SigLIP has no CLS token).

    Mean/std default to SigLIP's 0.5/0.5 when the checkpoint carries no preprocessor_config.json.
    """

    model_class = "SiglipVisionModel"
    config_class = "SiglipVisionConfig"
    pooling_modules = ("post_layernorm", "head")  # SigLIP's attention-pooling head, when the config has one
    default_mean = SIGLIP_MEAN
    default_std = SIGLIP_STD
    has_cls_token = False


@VISION_ENCODERS.register("timm")
class TimmVisionEncoder(nn.Module):
    """Any timm model by name as a B×C×h×w map (ViTs: tokens reshaped, prefix tokens dropped; ConvNets as is).

    Options: ``name``; ``pretrained`` (true/false, or a local checkpoint file loaded strictly); ``img_size``
    (for models that take it); ``model_kwargs`` (extra timm.create_model arguments, e.g. depth/embed_dim).
    """

    def __init__(self, name: str, pretrained: bool | str = False, img_size: int | None = None,
                 model_kwargs: dict | None = None):
        super().__init__()
        try:
            import timm
        except ImportError as exc:  # pragma: no cover - timm is a declared dependency
            raise ConfigError("model.vision_encoder: the 'timm' encoder needs timm (pip install timm)") from exc
        kwargs = dict(model_kwargs or {})
        if img_size is not None:
            kwargs["img_size"] = img_size
        try:
            model = timm.create_model(name, pretrained=pretrained is True, num_classes=0, **kwargs)
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise ConfigError(f"model.vision_encoder.name: timm has no model '{name}'") from exc
            raise
        if isinstance(pretrained, str):
            from timm.models import load_checkpoint

            load_checkpoint(model, pretrained, strict=True)
        self.model = model
        data_cfg = timm.data.resolve_data_config({}, model=model)
        # an explicit img_size wins over the pretrained config's nominal input size
        self.image_size = int(img_size or data_cfg["input_size"][-1])
        self.image_mean = tuple(float(x) for x in data_cfg["mean"])
        self.image_std = tuple(float(x) for x in data_cfg["std"])
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        self.channels_last_output = getattr(model, "output_fmt", "NCHW") == "NHWC"
        was_training = model.training
        model.eval()
        probe = self._drop_head_modules()  # the grid and width are read off this probe forward
        model.train(was_training)
        self.out_channels = int(probe.shape[1])
        self.grid_size = (int(probe.shape[2]), int(probe.shape[3]))

    @classmethod
    def weightless_node(cls, node: dict, read_config=None) -> dict:
        """The node without weights: timm's architecture comes from ``name`` (and ``model_kwargs``), so
        ``pretrained`` (true: timm's download; a path: a checkpoint file) becomes false."""
        return {**node, "pretrained": False} if node.get("pretrained") else node

    def architecture_node(self, node: dict) -> dict:
        return self.weightless_node(node)

    def _drop_head_modules(self) -> torch.Tensor:
        """Replace the modules that only the classifier head uses (ConvNeXt's head norm, a ViT's fc_norm or
        attention pool) by ``nn.Identity``: the outermost modules none of whose parameters get a gradient from
        the feature map (DDP rejects parameters that take no part in the loss). Called after any pretrained
        weights are loaded, so loading stays strict. Returns the probe forward's feature map."""
        x = torch.randn(1, 3, self.image_size, self.image_size, generator=torch.Generator().manual_seed(0))
        params = [p for p in self.model.parameters() if p.requires_grad]
        with torch.enable_grad():
            out = self._features(x)
            grads = torch.autograd.grad(out.float().sum(), params, allow_unused=True) if params else []
        out = out.detach()
        unused = {id(p) for p, g in zip(params, grads) if g is None}
        drop: list[str] = []
        for name, module in self.model.named_modules():  # parents come before their children
            own = list(module.parameters())
            if name and own and all(id(p) in unused for p in own) and not any(name.startswith(f"{d}.") for d in drop):
                drop.append(name)
        for name in drop:
            self.model.set_submodule(name, nn.Identity())
        if drop:
            with torch.no_grad():
                if not torch.equal(self._features(x), out):  # a dropped module was on the feature path after all
                    raise RuntimeError(f"timm encoder: dropping {drop} changed the features")
        return out

    def _features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.model.forward_features(pixel_values)
        if x.ndim == 3:  # ViT-style tokens: B×(prefix+N)×C
            x = x[:, self.num_prefix_tokens:]
            b, n, c = x.shape
            grid = getattr(getattr(self.model, "patch_embed", None), "grid_size", None)
            h, w = (int(grid[0]), int(grid[1])) if grid is not None else (math.isqrt(n), n // math.isqrt(n))
            return x.transpose(1, 2).reshape(b, c, h, w)
        if self.channels_last_output:
            return x.permute(0, 3, 1, 2)
        return x

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._features(pixel_values)
