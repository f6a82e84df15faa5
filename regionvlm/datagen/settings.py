"""The ``datagen:`` section of a config, validated key by key (an unknown key names its path and close matches).

```yaml
datagen:
  sources: [{type: coco_instances, ann_file: ..., image_root: ...}]   # DATASETS nodes (the existing readers)
  selection: {min_area: 0, skip_crowd: true, classes: null, exclude_classes: [], max_per_image: 8}
  crop: {context: 0.5, min_size: 32, highlight: none}                  # the region close-up
  prompts: {global: ..., region: ..., region_with_class: ..., use_class: true}
  captioner: {type: hf_vlm, pretrained: llava-hf/llava-1.5-7b-hf}     # CAPTIONERS node
  filters: {min_words: 3, max_words: 200, require_class: true, synonyms: {}, refusals: [...], max_similarity: 0.8}
  judge: null                                                          # optional JUDGES node
  output: {dir: ..., per: region, question: "Describe <region1> in detail."}
  batch_size: 8            # images per predict step (the captioner sees all their regions at once)
  num_workers: 0           # image decoding in DataLoader workers
  shard: 0                 # this job's part of the images (a SLURM array: datagen.shard=$SLURM_ARRAY_TASK_ID)
  num_shards: 1
  gallery: 8               # regions drawn in report/gallery.png
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from regionvlm.errors import ConfigError
from regionvlm.registry import construct

RGPT_GLOBAL = "Describe the image briefly."
RGPT_REGION = "In the context of the entire image, {global_caption}, describe the close-up region in detail."
RGPT_REGION_WITH_CLASS = ("In the context of the entire image, {global_caption}, describe the {class_name} in the "
                          "close-up region in detail.")
REFUSALS = ("i'm sorry", "i am sorry", "i cannot", "i can't", "i am unable", "i'm unable", "as an ai",
            "not possible to determine", "cannot be determined", "there is no close-up region")


@dataclass
class SelectionSettings:
    """Which annotated regions get a caption. Areas are in pixels of the original image."""

    min_area: float = 0.0
    max_area: float | None = None
    skip_crowd: bool = True
    classes: list[str] | None = None  # keep only these class names (None: all)
    exclude_classes: list[str] = field(default_factory=list)
    max_per_image: int | None = None  # a seeded draw among an image's remaining regions (top-level `seed`)


@dataclass
class CropSettings:
    """The close-up the captioner sees: the region's box grown by ``context`` × its side on every side, at least
    ``min_size`` pixels, clipped to the image; ``highlight``: ``none``, ``box`` (its outline drawn), ``mask``
    (its pixels tinted) or ``dim`` (everything outside it darkened to ``dim`` × brightness)."""

    context: float = 0.5
    min_size: int = 32
    highlight: str = "none"
    dim: float = 0.4


@dataclass
class PromptSettings:
    """RGPT's prompts; ``{global_caption}`` and ``{class_name}`` are filled in. ``region_with_class`` is used
    when ``use_class`` and the region has a class name."""

    global_: str = RGPT_GLOBAL
    region: str = RGPT_REGION
    region_with_class: str = RGPT_REGION_WITH_CLASS
    use_class: bool = True


@dataclass
class FilterSettings:
    """Verification rules, applied in this order; the first that fails is the drop reason."""

    min_words: int = 3
    max_words: int = 200
    refusals: list[str] = field(default_factory=lambda: list(REFUSALS))
    require_class: bool = True  # the class name, its plural or a synonym must be mentioned
    synonyms: dict[str, list[str]] = field(default_factory=dict)
    max_similarity: float = 0.8  # word-set Jaccard with the global caption or a kept caption of the same image
    judge_prompt: str = ("Does the following description describe a {class_name}? Answer yes or no.\n"
                         "Description: {caption}")


@dataclass
class OutputSettings:
    """``per: region``: one conversation row per kept region; ``per: image``: one multi-turn row per image (its
    regions share one image encoding in training)."""

    dir: str | None = None  # default: the run directory, output.root/output.name
    per: str = "region"
    question: str = "Describe <region1> in detail."
    file: str = "captions.jsonl"


@dataclass
class DatagenSettings:
    sources: list[dict]
    captioner: dict
    selection: SelectionSettings
    crop: CropSettings
    prompts: PromptSettings
    filters: FilterSettings
    output: OutputSettings
    judge: dict | None = None
    batch_size: int = 8
    num_workers: int = 0
    shard: int = 0
    num_shards: int = 1
    gallery: int = 8
    seed: int = 0


def _section(cls: type, node: Any, key: str) -> Any:
    node = dict(node or {})
    if cls is PromptSettings and "global" in node:  # `global` is a Python keyword
        node["global_"] = node.pop("global")
    return construct(cls, node, key_path=f"datagen.{key}", what=f"datagen.{key}")


def parse_settings(config: dict) -> DatagenSettings:
    """The resolved config's ``datagen:`` section → `DatagenSettings` (a `ConfigError` naming the key path)."""
    node = dict(config.get("datagen") or {})
    if not node:
        raise ConfigError("datagen: the config has no datagen section (see projects/rgpt/tiny/datagen.yaml)")
    for key in ("sources", "captioner"):
        if not node.get(key):
            raise ConfigError(f"datagen.{key}: required")
    if not isinstance(node["sources"], list):
        raise ConfigError("datagen.sources: expected a list of dataset nodes ({type: coco_instances, ...})")
    sections = {"selection": SelectionSettings, "crop": CropSettings, "prompts": PromptSettings,
                "filters": FilterSettings, "output": OutputSettings}
    for key, cls in sections.items():
        node[key] = _section(cls, node.get(key), key)
    if node["output"].dir is None:
        out = config.get("output") or {}
        node["output"].dir = f"{out.get('root', 'runs')}/{out.get('name', 'run')}"
    settings = construct(DatagenSettings, node, key_path="datagen", what="datagen", seed=int(config.get("seed", 0)))
    if settings.crop.highlight not in ("none", "box", "mask", "dim"):
        raise ConfigError(f"datagen.crop.highlight: expected none, box, mask or dim, got {settings.crop.highlight!r}")
    if settings.output.per not in ("region", "image"):
        raise ConfigError(f"datagen.output.per: expected 'region' or 'image', got {settings.output.per!r}")
    if "<region1>" not in settings.output.question:
        raise ConfigError("datagen.output.question: must name the region as <region1>")
    if not 0 <= settings.shard < settings.num_shards:
        raise ConfigError(f"datagen.shard: expected 0 ≤ shard < num_shards={settings.num_shards}, "
                          f"got {settings.shard}")
    if settings.batch_size < 1:
        raise ConfigError("datagen.batch_size: expected ≥ 1")
    return settings
