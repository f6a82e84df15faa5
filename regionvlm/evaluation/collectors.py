"""torchmetrics `Metric`s that accumulate benchmark outputs across processes.

Text cannot be all-gathered as text, so `PredictionCollector` keeps each process's prediction rows as UTF-8
JSON lines in a ``uint8`` tensor list state (``dist_reduce_fx="cat"``): torchmetrics concatenates, gathers the
(differently sized) tensors from every rank and concatenates again, and `compute` decodes the rows. The
evaluation loop updates it in ``predict_step``/``test_step``, and every rank sees all rows after ``compute``,
so a multi-GPU evaluation scores exactly the rows a single process would.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from regionvlm.evaluation.metrics import pope_from_counts, pope_parse


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
        data = "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
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


class PopeCounts(Metric):
    """Confusion counts of POPE answers (parsed as the official evaluation does), summed across processes.
    ``compute()`` gives accuracy, precision, recall, F1 and yes-ratio ×100."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("tp", "fp", "tn", "fn"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, answers: Sequence[str], labels: Sequence[str]) -> None:
        for text, label in zip(answers, labels, strict=True):
            pos, lab = pope_parse(text) == "yes", label != "no"
            if pos and lab:
                self.tp += 1
            elif pos:
                self.fp += 1
            elif lab:
                self.fn += 1
            else:
                self.tn += 1

    def compute(self) -> dict[str, float]:
        return pope_from_counts(int(self.tp), int(self.fp), int(self.tn), int(self.fn))
