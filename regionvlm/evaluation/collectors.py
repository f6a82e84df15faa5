"""The torchmetrics `Metric` that gathers benchmark predictions across processes.

Text cannot be all-gathered as text, so `PredictionCollector` keeps each process's prediction rows as UTF-8
JSON lines in a ``uint8`` tensor list state (``dist_reduce_fx="cat"``): torchmetrics concatenates, gathers the
(differently sized) tensors from every rank and concatenates again, and `compute` decodes the rows. The
evaluation loop updates it in ``predict_step``/``test_step``, and every rank sees all rows after ``compute``,
so a multi-GPU evaluation scores exactly the rows a single process would.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from regionvlm.io import dumps_json


class PredictionCollector(Metric):
    """Gathers prediction rows (JSON-serialisable dicts with an ``id``) from every process.

    ``compute()`` returns the rows of all processes, first occurrence of each id kept: a
    ``DistributedSampler`` pads the last batch by repeating samples, and a padded duplicate must not be
    scored twice."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("encoded", default=[], dist_reduce_fx="cat")

    def update(self, rows: Iterable[Mapping]) -> None:
        data = "".join(dumps_json(dict(r)) + "\n" for r in rows).encode("utf-8")
        self.encoded.append(torch.frombuffer(bytearray(data), dtype=torch.uint8).clone().to(self.device))

    def compute(self) -> list[dict]:
        state = self.encoded
        if isinstance(state, list) and not state:
            return []
        flat = dim_zero_cat(state) if isinstance(state, list) else state
        text = bytes(flat.cpu().numpy().tobytes()).decode("utf-8")
        rows, seen = [], set()
        for line in text.splitlines():
            if not line:
                continue
            row = json.loads(line)
            key = json.dumps([row.get("split"), row.get("id")])
            if key not in seen:
                seen.add(key)
                rows.append(row)
        return rows
