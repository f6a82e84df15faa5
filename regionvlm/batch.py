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
    """A collated batch. B rows, L tokens, S×S processed image size, R regions in the whole batch,
    M region mentions in the whole batch (in token order, sample by sample). Unpacked, a row is a sample and
    images are rows (I = B); packed, a row holds several samples, ``pixel_values`` has one image per sample
    (I, in row-major token order) and ``ids``/``targets`` are per sample."""

    input_ids: torch.Tensor                 # B×L long
    attention_mask: torch.Tensor            # B×L long (1 = real token)
    pixel_values: torch.Tensor              # I×3×S×S float, normalised for the vision encoder
    region_masks: torch.Tensor              # R×S×S bool, aligned with pixel_values (extractors resize them)
    region_boxes: torch.Tensor              # R×4 float xyxy in processed-image pixels
    region_image_index: torch.Tensor        # R long: which image (0..I-1) each region belongs to
    region_mentions: torch.Tensor           # M long: index into the R regions for each <regionK> mention
    labels: torch.Tensor | None = None      # B×L long, IGNORE_INDEX outside answers (None when generating)
    ids: list[str] = field(default_factory=list)          # sample ids, B
    targets: list[Any] = field(default_factory=list)      # reference answers / metadata per sample, B
    # Structured attention (None: plain causal attention over each row, positions 0..L-1). Set by the collator
    # for packed rows and for grouped samples whose turns are independent:
    position_ids: torch.Tensor | None = None     # B×L long, restarting per packed sample / per independent turn
    segment_ids: torch.Tensor | None = None      # B×L long: packed sample within the row (-1 = padding)
    turn_ids: torch.Tensor | None = None         # B×L long: 0 = prefix every turn sees, k ≥ 1 = turn k only
    image_row_index: torch.Tensor | None = None  # I long: the row of each image (packing); None: image b → row b

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
