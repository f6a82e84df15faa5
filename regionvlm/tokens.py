"""Special tokens and the ignored-label value: the one neutral place that data, model and plugins import.

- ``<image>`` in a prompt is expanded to ``num_image_tokens`` copies of ``IMAGE_TOKEN``.
- ``<regionK>`` (1-based K) is expanded to ``tokens_per_region`` copies of ``REGION_TOKEN``.
- ``labels`` are ``IGNORE_INDEX`` everywhere except the assistant's answer tokens.
"""

IGNORE_INDEX = -100
IMAGE_TOKEN = "<image_patch>"      # placeholder token the `<image>` tag expands to
REGION_TOKEN = "<region_feat>"     # placeholder token each `<regionK>` tag expands to
SPECIAL_TOKENS = (IMAGE_TOKEN, REGION_TOKEN)
