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


#: the fields each template of the datagen section may use (`str.format` names; nothing else is filled in)
TEMPLATE_FIELDS = {"prompts.global": ("global_caption", "class_name"),
                   "prompts.region": ("global_caption", "class_name"),
                   "prompts.region_with_class": ("global_caption", "class_name"),
                   "filters.judge_prompt": ("class_name", "caption")}


def check_template(template: Any, fields: tuple[str, ...], key: str) -> None:
    """A `str.format` template that names only ``fields``, plainly (no ``{}``, ``{0}``, attribute or index access
    such as ``{class_name.upper}``, no nested ``{...}`` in a format spec), and formats: else one `ConfigError`
    naming ``key``. Checked before any image is captioned."""
    import string

    from regionvlm.registry import _did_you_mean

    shown = ", ".join(f"{{{f}}}" for f in fields) or "none"
    braces = "write {{ and }} for literal braces"
    if not isinstance(template, str):
        raise ConfigError(f"{key}: expected a text template, got {template!r} (on the command line, a value "
                          f"starting with {{ is YAML: quote it, '{key}=\"{{...}}\"')")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"{key}: invalid template: {exc}; {braces}") from None
    for _, name, spec, _ in parsed:
        if name is None:
            continue
        if name not in fields:
            why = ("positional fields are not filled in" if name == "" or name.isdigit()
                   else "attribute and index access are not allowed" if name.split(".")[0].split("[")[0] in fields
                   else "unknown field")
            raise ConfigError(f"{key}: {{{name}}}: {why}{_did_you_mean(name, fields)}; the fields are {shown} "
                              f"({braces})")
        if spec and "{" in spec:
            raise ConfigError(f"{key}: {{{name}:{spec}}}: a format spec may not hold fields ({braces})")
    try:
        template.format(**dict.fromkeys(fields, "x"))
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ConfigError(f"{key}: {exc} ({braces})") from None


def _check_captioner_templates(node: Any) -> None:
    """A captioner class may declare ``TEMPLATE_FIELDS = {argument: (field, ...)}``: the templates given in its
    config node are checked like the section's own (a captioner is not built before the first image)."""
    from regionvlm.registry import CAPTIONERS

    if not isinstance(node, dict) or not isinstance(node.get("type"), str):
        return
    cls = CAPTIONERS.get(node["type"], key_path="datagen.captioner.type")
    for arg, fields in getattr(cls, "TEMPLATE_FIELDS", {}).items():
        if arg in node:
            check_template(node[arg], tuple(fields), f"datagen.captioner.{arg}")


def _bounded(value: Any, key: str, low: float | None = None, high: float | None = None,
             optional: bool = False) -> None:
    import math

    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (low is not None and value < low) or (high is not None and value > high):
        span = f"{low if low is not None else '-inf'}..{high if high is not None else 'inf'}"
        raise ConfigError(f"datagen.{key}: expected a number in {span}{' or null' if optional else ''}, "
                          f"got {value!r}")


def _check_numbers(s: DatagenSettings) -> None:
    sel, crop, flt = s.selection, s.crop, s.filters
    _bounded(sel.min_area, "selection.min_area", 0)
    _bounded(sel.max_area, "selection.max_area", sel.min_area, optional=True)
    _bounded(sel.max_per_image, "selection.max_per_image", 1, optional=True)
    _bounded(crop.context, "crop.context", 0)
    _bounded(crop.min_size, "crop.min_size", 1)
    _bounded(crop.dim, "crop.dim", 0, 1)
    _bounded(flt.min_words, "filters.min_words", 0)
    _bounded(flt.max_words, "filters.max_words", flt.min_words)
    _bounded(flt.max_similarity, "filters.max_similarity", 0, 1)
    _bounded(s.num_workers, "num_workers", 0)
    _bounded(s.gallery, "gallery", 0)
    _bounded(s.num_shards, "num_shards", 1)


def parse_settings(config: dict) -> DatagenSettings:
    """The resolved config's ``datagen:`` section → `DatagenSettings` (a `ConfigError` naming the key path):
    keys, types, ranges, the templates' fields (`check_template`) and an output file name that stays in the
    output folder."""
    from regionvlm.config import SEED_RANGE

    node = dict(config.get("datagen") or {})
    if not node:
        raise ConfigError("datagen: the config has no datagen section (see projects/rgpt/tiny/datagen.yaml)")
    for key in ("sources", "captioner"):
        if not node.get(key):
            raise ConfigError(f"datagen.{key}: required")
    if not isinstance(node["sources"], list):
        raise ConfigError("datagen.sources: expected a list of dataset nodes ({type: coco_instances, ...})")
    seed = config.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise ConfigError(f"seed: expected a whole number in {SEED_RANGE[0]}..{SEED_RANGE[1]}, got {seed!r}")
    sections = {"selection": SelectionSettings, "crop": CropSettings, "prompts": PromptSettings,
                "filters": FilterSettings, "output": OutputSettings}
    for key, cls in sections.items():
        node[key] = _section(cls, node.get(key), key)
    if node["output"].dir is None:
        out = config.get("output") or {}
        node["output"].dir = f"{out.get('root', 'runs')}/{out.get('name', 'run')}"
    settings = construct(DatagenSettings, node, key_path="datagen", what="datagen", seed=seed)
    if settings.crop.highlight not in ("none", "box", "mask", "dim"):
        raise ConfigError(f"datagen.crop.highlight: expected none, box, mask or dim, got {settings.crop.highlight!r}")
    if settings.output.per not in ("region", "image"):
        raise ConfigError(f"datagen.output.per: expected 'region' or 'image', got {settings.output.per!r}")
    if not isinstance(settings.output.question, str) or "<region1>" not in settings.output.question:
        raise ConfigError("datagen.output.question: must name the region as <region1>")
    file = settings.output.file
    if not isinstance(file, str) or not file or file in (".", "..") or "/" in file or "\\" in file or "\0" in file:
        raise ConfigError(f"datagen.output.file: expected a file name inside datagen.output.dir (no folders), "
                          f"got {file!r}")
    if file == "report" or file == "chunks":
        raise ConfigError(f"datagen.output.file: {file!r} is a folder datagen writes; choose another name")
    _check_numbers(settings)
    if not 0 <= settings.shard < settings.num_shards:
        raise ConfigError(f"datagen.shard: expected 0 ≤ shard < num_shards={settings.num_shards}, "
                          f"got {settings.shard}")
    if settings.batch_size < 1:
        raise ConfigError("datagen.batch_size: expected ≥ 1")
    prompts = {"prompts.global": settings.prompts.global_, "prompts.region": settings.prompts.region,
               "prompts.region_with_class": settings.prompts.region_with_class,
               "filters.judge_prompt": settings.filters.judge_prompt}
    for key, template in prompts.items():
        check_template(template, TEMPLATE_FIELDS[key], f"datagen.{key}")
    _check_captioner_templates(settings.captioner)
    return settings
