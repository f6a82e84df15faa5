"""Fusion: write image and region features into the token embeddings at their placeholder tokens.

One pure function, no Python loop over tokens or regions: the collator has already expanded ``<image>`` to N
copies of the image placeholder and each ``<regionK>`` mention to k copies of the region placeholder, so the
features are written with two ``masked_scatter`` calls in token order. Counts are checked per sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from regionvlm.tokens import IGNORE_INDEX


class FusionError(ValueError):
    """Placeholder tokens and features disagree (a collator/model mismatch, not a user input error)."""


def _name(i: int, sample_ids: Sequence[str] | None) -> str:
    if sample_ids is not None and i < len(sample_ids):
        return f"sample {i} ('{sample_ids[i]}')"
    return f"sample {i}"


def fuse(inputs_embeds: torch.Tensor, input_ids: torch.Tensor, image_token_id: int,
         image_features: torch.Tensor | None, region_token_id: int, region_features: torch.Tensor | None,
         region_mentions: torch.Tensor, region_image_index: torch.Tensor | None = None,
         sample_ids: Sequence[str] | None = None, image_row_index: torch.Tensor | None = None) -> torch.Tensor:
    """Return ``inputs_embeds`` (B×L×D) with features written at the placeholders (a new tensor).

    - ``image_features`` B×N×D: sample b's N image placeholders get ``image_features[b]``; a sample with no image
      placeholder is skipped; any other count is an error.
    - ``region_features`` R×k×D and ``region_mentions`` M (indices into R, in token order, sample by sample):
      the M·k region placeholders receive ``region_features[region_mentions]`` in order. With
      ``region_image_index`` (R) each sample's placeholder count must be k × its mentions and the mentions must
      be ordered by sample; without it only the batch total is checked.
    - ``image_row_index`` (I, packed rows): image i belongs to row ``image_row_index[i]`` (rows then hold several
      images, in token order; -1 for an image without placeholders); without it image b is row b.
    Raises `FusionError` naming the sample and both counts.
    """
    out = inputs_embeds
    dtype = inputs_embeds.dtype
    b, _, d = inputs_embeds.shape

    image_mask = input_ids == image_token_id
    image_counts = image_mask.sum(1)
    if image_row_index is not None:  # packed: row r holds (its images × N) placeholders, features in row order
        n = image_features.shape[1] if image_features is not None else 0
        placed = image_row_index >= 0  # -1: a text-only sample's blank image, no placeholders
        expected = torch.bincount(image_row_index[placed], minlength=b) * n
        bad = (image_counts != expected).nonzero()
        if bad.numel():
            i = int(bad[0])
            raise FusionError(f"row {i}: {int(image_counts[i])} image placeholder tokens but its images have "
                              f"{int(expected[i])} feature tokens")
        if n and bool(placed.any()):
            out = out.masked_scatter(image_mask[..., None], image_features[placed].reshape(-1, d).type(dtype))
    elif image_features is not None or bool(image_mask.any()):
        if image_features is None:
            raise FusionError(f"{_name(int(image_mask.any(1).nonzero()[0]), sample_ids)} has "
                              f"{int(image_counts.max())} image placeholder tokens but no image features were given")
        n = image_features.shape[1]
        bad = ((image_counts != n) & (image_counts != 0)).nonzero()
        if bad.numel():
            i = int(bad[0])
            raise FusionError(f"{_name(i, sample_ids)}: {int(image_counts[i])} image placeholder tokens "
                              f"but the image has {n} feature tokens")
        has_image = image_counts == n
        if n and bool(has_image.any()):
            feats = image_features[has_image].reshape(-1, d).type(dtype)
            out = out.masked_scatter(image_mask[..., None], feats)

    region_mask = input_ids == region_token_id
    region_counts = region_mask.sum(1)
    m = region_mentions.shape[0]
    k = region_features.shape[1] if region_features is not None else 1
    if region_image_index is not None and m:
        mention_image = region_image_index[region_mentions]
        if image_row_index is not None:
            mention_image = image_row_index[mention_image]
        if bool((mention_image[1:] < mention_image[:-1]).any()):
            raise FusionError("region_mentions are not ordered sample by sample (token order)")
        expected = torch.bincount(mention_image, minlength=b) * k
        bad = (region_counts != expected).nonzero()
        if bad.numel():
            i = int(bad[0])
            raise FusionError(f"{_name(i, sample_ids)}: {int(region_counts[i])} region placeholder tokens but "
                              f"{int(expected[i]) // k} region mentions × {k} tokens per region = {int(expected[i])}")
    elif region_image_index is not None and bool(region_mask.any()):
        i = int(region_mask.any(1).nonzero()[0])
        raise FusionError(f"{_name(i, sample_ids)}: {int(region_counts[i])} region placeholder tokens but 0 region "
                          f"mentions")
    total = int(region_counts.sum())
    if total != m * k:
        raise FusionError(f"batch: {total} region placeholder tokens but {m} region mentions × {k} tokens per "
                          f"region = {m * k}")
    if m:
        feats = region_features[region_mentions].reshape(-1, d).type(dtype)
        out = out.masked_scatter(region_mask[..., None], feats)
    return out


def ignore_placeholder_labels(labels: torch.Tensor, input_ids: torch.Tensor,
                              placeholder_ids: Sequence[int]) -> torch.Tensor:
    """Labels with every placeholder position set to IGNORE_INDEX (features are inputs, never targets)."""
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for token_id in placeholder_ids:  # loop over the (two) placeholder kinds, not over tokens
        mask |= input_ids == token_id
    return labels.masked_fill(mask, IGNORE_INDEX)
