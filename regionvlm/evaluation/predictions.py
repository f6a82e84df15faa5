"""Prediction files: JSON lines, one row per evaluated sample.

Every row carries what scoring needs: ``id`` (the benchmark's official id, e.g. a COCO annotation id),
``text`` (the model's raw answer; the benchmark post-processes it when scoring) and the benchmark's extra
fields (`Benchmark.row_fields`, e.g. REC's ``candidates``: the candidate annotation ids in the order shown).

Validation is strict because a silently mis-scored file is worse than an error: a malformed line, a row
without a required field, a duplicate id or an id the annotations do not know is one `DataError` naming the
file and line; ids the file does not cover are an error too unless ``allow_partial`` (then the coverage is
reported with the results, never hidden).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from regionvlm.errors import DataError

PREVIEW = 3   # how many missing ids an error message shows


@dataclass
class Predictions:
    """Validated prediction rows keyed by `Benchmark.row_key`, and how much of the benchmark they cover."""

    rows: dict[str, dict]
    expected: int
    source: str

    @property
    def coverage(self) -> float:
        return len(self.rows) / self.expected if self.expected else 1.0


def _default_key(row: Mapping) -> str:
    return str(row["id"])


def index_predictions(
    rows: Iterable[tuple[int, Any]],
    expected_ids: Collection[str],
    source: str,
    required: Iterable[str] = ("id", "text"),
    key: Callable[[Mapping], str] = _default_key,
    allow_partial: bool = False,
) -> Predictions:
    """Check ``(line number, row)`` pairs against the benchmark's ids; see the module docstring."""
    required = tuple(dict.fromkeys(("id", "text", *required)))
    expected = set(expected_ids)
    out: dict[str, dict] = {}
    first_line: dict[str, int] = {}
    for lineno, row in rows:
        where = f"{source}: line {lineno}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for field in required:
            if field not in row:
                raise DataError(f"{where}: missing field '{field}'")
        if not isinstance(row["text"], str):
            raise DataError(f"{where}: 'text' must be a string, got {type(row['text']).__name__}")
        k = key(row)
        if k in first_line:
            raise DataError(f"{where}: duplicate id {k!r} (first at line {first_line[k]})")
        if k not in expected:
            raise DataError(f"{where}: unknown id {k!r}: not in the benchmark's annotations")
        first_line[k] = lineno
        out[k] = row
    missing = [i for i in expected if i not in out]
    if missing and not allow_partial:
        preview = ", ".join(repr(m) for m in sorted(missing, key=str)[:PREVIEW])
        raise DataError(
            f"{source}: missing predictions for {len(missing)} of {len(expected)} ids (e.g. {preview}); "
            f"pass --allow-partial (allow_partial=True) to score the {len(out)} covered ones"
        )
    return Predictions(rows=out, expected=len(expected), source=source)


def read_predictions(path: str | os.PathLike, expected_ids: Collection[str], **kwargs) -> Predictions:
    """Read and validate a predictions file (keyword arguments as `index_predictions`)."""
    from regionvlm.data.formats import iter_jsonl

    return index_predictions(iter_jsonl(path), expected_ids, source=str(path), **kwargs)


def write_predictions(path: str | os.PathLike, rows: Iterable[Mapping]) -> None:
    """Write rows as JSON lines, atomically (temp file + rename)."""
    from regionvlm.data.formats import write_jsonl

    write_jsonl(path, rows)
