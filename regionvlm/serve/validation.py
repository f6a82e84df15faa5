"""An OpenAI chat-completions request → a checked `Question`, or an `APIError` naming the bad field.

The request shape (docs/serving.md has the full reference)::

    {"model": "...", "max_tokens": 16, "temperature": 0,
     "messages": [{"role": "user",
                   "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
                               {"type": "text", "text": "What is <region1> next to <region2>?"}],
                   "regions": [{"box": [x1, y1, x2, y2]}, {"mask": "data:image/png;base64,..."}]}]}

``regions`` is this API's extension field, on the user message that holds the image: boxes in the image's
pixel coordinates, or masks as PNG data URLs of the image's size (non-zero = inside; alpha, when present, is
the mask: `regionvlm.data.region_input.mask_from_picture`, the rule of every entry point). ``<regionK>`` in the
text names ``regions[K-1]``. Everything is checked here, in the request's own thread, so the model's worker
only ever sees questions it can answer.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

from regionvlm.text.templates import REGION_TAG


class APIError(Exception):
    """A request the server refuses: HTTP status + the OpenAI error body ``{"error": {message, type, param}}``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": None}}


@dataclass
class Question:
    """One checked question: what `RegionChat.sample` takes, plus its generation settings."""

    image: Any                      # RGB PIL image, EXIF orientation applied (the size the regions refer to)
    regions: list                   # xyxy boxes (lists of 4 floats) and H×W bool masks, in order
    prompt: str
    generation: dict = field(default_factory=dict)
    max_new_tokens: int = 0
    stream: bool = False            # answer as server-sent events
    include_usage: bool = False     # stream_options.include_usage: a last event with the token counts
    # set by the serving engine: the raw sample, where a streamed answer's ids arrive, the token counts
    sample: dict | None = None
    sink: Any = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Limits:
    max_image_pixels: int = 4096 * 4096
    max_new_tokens: int = 512       # a request's max_tokens above this is refused
    max_regions: int = 64           # regions per request: each mask decodes to an image-sized array
    max_mask_pixels: int = 4096 * 4096  # all of a request's masks together (64 masks of 4096² were 1 GB)
    max_text_chars: int = 100_000   # a longer question is refused before it is tokenised


def bad(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param)


def parse_json(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: a number of > 4300 digits
        raise bad(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad("request body must be a JSON object")
    return data


def decode_data_url(url: Any, param: str) -> bytes:
    """The bytes of a base64 ``data:`` URL (remote URLs are refused: the server never fetches anything)."""
    if not isinstance(url, str) or not url.startswith("data:"):
        raise bad("expected a base64 data URL ('data:image/png;base64,...'); the server does not fetch URLs", param)
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise bad("data URL must be base64-encoded ('data:<mime>;base64,<data>')", param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad(f"bad base64 in data URL: {exc}", param) from None


def open_image(data: bytes, param: str, limits: Limits, mask: bool = False, check: Any = None) -> Any:
    """Decoded RGB image (``mask=True``: the picture as it is, alpha kept, for the mask rule); the pixel count is
    checked from the header, before decoding, and so is ``check(width, height)`` when given."""
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    from regionvlm.data.processing import load_image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > limits.max_image_pixels:
                raise APIError(413, f"image is {w}×{h} = {w * h} pixels; this server accepts at most "
                                    f"{limits.max_image_pixels} (--max-image-pixels)", "invalid_request_error", param)
            if check is not None:
                check(w, h)
            im.load()
            im = ImageOps.exif_transpose(im)
            return im if mask else load_image(im)
    except APIError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise bad(f"not a readable image: {exc}", param) from None


def parse_region(region: Any, param: str, size: tuple[int, int], limits: Limits) -> Any:
    """``{"box": [x1, y1, x2, y2]}`` (pixels, inside the image) or ``{"mask": PNG data URL}`` (image-sized)."""
    from regionvlm.data.region_input import mask_from_picture

    w, h = size
    if not isinstance(region, dict) or len(region) != 1 or next(iter(region)) not in ("box", "mask"):
        raise bad('a region is {"box": [x1, y1, x2, y2]} or {"mask": "data:image/png;base64,..."}', param)
    if "box" in region:
        box = region["box"]
        if not isinstance(box, list) or len(box) != 4 or not all(_finite(v) for v in box):
            raise bad("box must be 4 finite numbers [x1, y1, x2, y2]", f"{param}.box")
        x1, y1, x2, y2 = (float(v) for v in box)
        if not (x1 < x2 and y1 < y2):
            raise bad(f"box {box} is empty: needs x1 < x2 and y1 < y2", f"{param}.box")
        if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
            raise bad(f"box {box} is out of the image's bounds (width {w}, height {h})", f"{param}.box")
        return [x1, y1, x2, y2]
    mask_param = f"{param}.mask"
    picture = open_image(decode_data_url(region["mask"], mask_param), mask_param, limits, mask=True)
    if picture.size != (w, h):
        raise bad(f"mask is {picture.size[0]}×{picture.size[1]} but the image is {w}×{h}", mask_param)
    mask = mask_from_picture(picture, mask_param)
    if not mask.any():
        raise bad("mask is empty (no non-zero pixel)", mask_param)
    return mask


def _finite(v: Any) -> bool:
    """A JSON number that is a finite float (an integer of 400 digits is not: float() overflows)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def parse_content(content: Any, param: str, limits: Limits, check: Any = None) -> tuple[str, Any]:
    """A user message's content → (text, image); exactly one image, as an ``image_url`` part (``check``: see
    `open_image`)."""
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise bad("content must be a string or a list of parts", param)
    texts, images = [], []
    for i, part in enumerate(content):
        where = f"{param}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            try:
                part["text"].encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate ("\ud800") is valid JSON but no text
                raise bad("text is not valid Unicode (a lone surrogate)", f"{where}.text") from None
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            images.append(open_image(decode_data_url(url, f"{where}.image_url.url"), f"{where}.image_url.url", limits,
                                     check=check))
        else:
            raise bad('a content part is {"type": "text", "text": ...} or {"type": "image_url", "image_url": '
                      '{"url": ...}}', where)
    if not images:
        raise bad("missing image: the user message needs one image_url part", param)
    if len(images) > 1:
        raise bad(f"{len(images)} images in one message; this model takes one image per question", param)
    text = "\n".join(t.strip() for t in texts if t.strip())
    if len(text) > limits.max_text_chars:
        raise APIError(413, f"the question is {len(text)} characters; this server accepts at most "
                            f"{limits.max_text_chars}", "invalid_request_error", param)
    if not text:
        raise bad("missing question: the user message has no text part", param)
    if "<image>" in text:
        raise bad("the image goes in an image_url part, not as <image> in the text", param)
    return text, images[0]


def generation_settings(data: dict, limits: Limits, default_max_new_tokens: int) -> dict:
    """OpenAI sampling fields → `RegionChat.generate` keywords (absent: the export's config, greedy)."""
    out: dict = {}
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    if max_tokens is not None:
        if (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                or not 1 <= max_tokens <= limits.max_new_tokens):
            raise bad(f"max_tokens must be an integer in [1, {limits.max_new_tokens}]", "max_tokens")
        out["max_new_tokens"] = max_tokens
    for key, low, high in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
            raise bad(f"{key} must be a number in [{low}, {high}]", key)
        out[key] = float(value)
    if out.get("temperature", 0.0) > 0:
        out["do_sample"] = True
    elif "temperature" in out:  # temperature 0 means greedy, as in OpenAI's API
        out.pop("temperature")
        out["do_sample"] = False
    out.setdefault("max_new_tokens", default_max_new_tokens)
    return out


def parse_chat_request(data: dict, model_id: str, limits: Limits, default_max_new_tokens: int) -> Question:
    if data.get("model") not in (None, model_id):
        raise APIError(404, f"model '{data.get('model')}' is not served here; this server serves '{model_id}'",
                       "invalid_request_error", "model")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("stream must be true or false", "stream")
    options = data.get("stream_options")
    if options is not None and (not stream or not isinstance(options, dict)
                                or not set(options) <= {"include_usage"}
                                or not isinstance(options.get("include_usage", False), bool)):
        raise bad('stream_options is {"include_usage": true|false}, with stream=true', "stream_options")
    if data.get("n", 1) != 1:
        raise bad("n must be 1", "n")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list", "messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") != "user":
            raise bad("only one user message is supported (no system or assistant turns: the export carries "
                      "its own chat template)", f"messages[{i}].role")
    if len(messages) != 1:
        raise bad("only one user message is supported (single-turn questions)", "messages")
    msg = messages[0]
    raw_regions = msg.get("regions", [])
    if not isinstance(raw_regions, list):
        raise bad("regions must be a list", "messages[0].regions")
    if len(raw_regions) > limits.max_regions:
        raise APIError(413, f"{len(raw_regions)} regions; this server accepts at most {limits.max_regions} per "
                            f"request", "invalid_request_error", "messages[0].regions")
    masks = sum(isinstance(r, dict) and "mask" in r for r in raw_regions)

    def mask_budget(w: int, h: int) -> None:  # from the image's header, before anything is decoded
        if masks * w * h > limits.max_mask_pixels:
            raise APIError(413, f"{masks} masks of {w}×{h} = {masks * w * h} pixels; this server accepts at most "
                                f"{limits.max_mask_pixels} mask pixels per request (--max-mask-pixels)",
                           "invalid_request_error", "messages[0].regions")

    text, image = parse_content(msg.get("content"), "messages[0].content", limits, check=mask_budget)
    regions = [parse_region(r, f"messages[0].regions[{k}]", image.size, limits) for k, r in enumerate(raw_regions)]
    tags = REGION_TAG.findall(text)
    if any(len(m) > 6 for m in tags):
        raise bad(f"the text names <region{max(tags, key=len)[:12]}…>: no message has that many regions",
                  "messages[0].content")
    for k in sorted({int(m) for m in tags}):
        if not 1 <= k <= len(regions):
            raise bad(f"the text names <region{k}> but the message has {len(regions)} region(s)",
                      "messages[0].content")
    generation = generation_settings(data, limits, default_max_new_tokens)
    return Question(image, regions, text, generation, generation["max_new_tokens"], stream,
                    bool((options or {}).get("include_usage")))
