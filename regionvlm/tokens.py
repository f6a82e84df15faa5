"""Special tokens and the ignored-label value: the one neutral place that data, model and plugins import.

- ``<image>`` in a prompt is expanded to ``num_image_tokens`` copies of ``IMAGE_TOKEN``.
- ``<regionK>`` (1-based K) is expanded to ``tokens_per_region`` copies of ``REGION_TOKEN``.
- ``labels`` are ``IGNORE_INDEX`` everywhere except the assistant's answer tokens.
"""

IGNORE_INDEX = -100
IMAGE_TOKEN = "<image_patch>"      # placeholder token the `<image>` tag expands to
REGION_TOKEN = "<region_feat>"     # placeholder token each `<regionK>` tag expands to
SPECIAL_TOKENS = (IMAGE_TOKEN, REGION_TOKEN)


def add_placeholder_tokens(tokenizer) -> tuple[int, int]:
    """Add ``IMAGE_TOKEN`` and ``REGION_TOKEN`` to a tokenizer that lacks them (idempotent) and return their ids.
    A model built with the tokenizer sizes its embeddings to ``len(tokenizer)``."""
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), tokenizer.convert_tokens_to_ids(REGION_TOKEN)
