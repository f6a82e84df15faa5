"""Heads: turn the LLM's output and the batch's labels into a loss.

Head interface (for new heads):
- ``forward(logits: B×L×V, labels: B×L long (IGNORE_INDEX = not scored), hidden_states: B×L×D | None,
  shifted: bool = False) → dict`` with at least ``"loss"`` (a scalar tensor); other entries are
  logged/returned by the model. ``shifted=True``: ``labels[:, j]`` is already the target of ``logits[:, j]``
  (the model computed logits only at scored positions).
- class attribute ``needs_hidden_states`` (bool): when true the model asks the LLM for its last hidden states
  (e.g. a classification or box-regression head reading the answer token's state).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from regionvlm.registry import HEADS
from regionvlm.tokens import IGNORE_INDEX


@HEADS.register("lm")
class LMHead(nn.Module):
    """Next-token cross-entropy on answer tokens only (shifted by one; IGNORE_INDEX positions skipped)."""

    needs_hidden_states = False

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, hidden_states: torch.Tensor | None = None,
                shifted: bool = False) -> dict[str, torch.Tensor]:
        shift_logits = (logits if shifted else logits[:, :-1]).float()
        shift_labels = labels if shifted else labels[:, 1:]
        total = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                                ignore_index=IGNORE_INDEX, reduction="sum")
        count = (shift_labels != IGNORE_INDEX).sum()
        # a batch without answer tokens gives loss 0 (not NaN) and still a graph to backpropagate through
        loss = total / count.clamp_min(1)
        return {"loss": loss, "num_tokens": count}
