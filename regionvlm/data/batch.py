"""The contract between data and model: what the collator produces and `RegionVLM` consumes.

Token conventions (`regionvlm.tokens`; the collator is the only place that knows about tokens): ``<regionK>``
(1-based K) is recorded as a *mention* of region K-1 of that sample; a region may be mentioned several times or
not at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch


@dataclass
class Batch:
    """A collated batch. B samples, L tokens, S×S processed image size, R regions in the whole batch,
    M region mentions in the whole batch (in token order, sample by sample)."""

    input_ids: torch.Tensor                 # B×L long
    attention_mask: torch.Tensor            # B×L long (1 = real token)
    pixel_values: torch.Tensor              # B×3×S×S float, normalised for the vision encoder
    region_masks: torch.Tensor              # R×S×S float in [0, 1], aligned with pixel_values
    region_boxes: torch.Tensor              # R×4 float xyxy in processed-image pixels
    region_image_index: torch.Tensor        # R long: which sample (0..B-1) each region belongs to
    region_mentions: torch.Tensor           # M long: index into the R regions for each <regionK> mention
    labels: torch.Tensor | None = None      # B×L long, IGNORE_INDEX outside answers (None when generating)
    ids: list[str] = field(default_factory=list)          # sample ids, B
    targets: list[Any] = field(default_factory=list)      # reference answers / metadata per sample, B

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
        """Move tensors (floating ones optionally cast to ``dtype``); Lightning calls this via transfer."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.to(device, dtype=dtype if (dtype is not None and v.is_floating_point()) else None)
            out[f.name] = v
        return Batch(**out)

    def __len__(self) -> int:
        return self.input_ids.shape[0]
