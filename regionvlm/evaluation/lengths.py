"""Lengths and clock positions in free text ("2.5 feet", "2 o'clock") and SpatialRGPT-Bench's success rules.

Reference: SpatialRGPT-Bench (success if 0.75·gt ≤ pred ≤ 1.25·gt, relative error |pred-gt|/(gt+1e-4); directions
in clock positions, success within one hour).
"""

from __future__ import annotations

import re

_UNITS_M = {
    "mm": 0.001, "millimeter": 0.001, "millimetre": 0.001, "cm": 0.01, "centimeter": 0.01, "centimetre": 0.01,
    "m": 1.0, "meter": 1.0, "metre": 1.0, "km": 1000.0, "kilometer": 1000.0, "kilometre": 1000.0,
    "in": 0.0254, "inch": 0.0254, "inches": 0.0254, "ft": 0.3048, "foot": 0.3048, "feet": 0.3048,
    "yd": 0.9144, "yard": 0.9144,
}
_QUANTITY = re.compile(r"(-?\d+(?:,\d{3})*(?:\.\d+)?|-?\.\d+)\s*(millimet(?:er|re)s?|centimet(?:er|re)s?|"
                       r"kilomet(?:er|re)s?|met(?:er|re)s?|inch(?:es)?|feet|foot|yards?|mm|cm|km|ft|yd|in|m)?\b",
                       re.IGNORECASE)


def parse_length_m(text: str, default_unit: str = "m") -> float | None:
    """The first length in the text, in metres ("2.5 feet" → 0.762, "48 cm" → 0.48); a bare number is read in
    ``default_unit``. None when the text holds no number."""
    m = _QUANTITY.search(text)
    if not m:
        return None
    value = float(m.group(1).replace(",", ""))
    unit = (m.group(2) or default_unit).lower()
    if unit not in _UNITS_M:
        unit = unit.rstrip("s")
    return value * _UNITS_M[unit]


def quantitative_success(pred: float, gt: float) -> tuple[bool, float]:
    """SpatialRGPT-Bench: success when 0.75·gt ≤ pred ≤ 1.25·gt; relative error |pred−gt| / (gt + 1e-4)."""
    return (0.75 * gt <= pred <= 1.25 * gt), abs(pred - gt) / (gt + 1e-4)


_CLOCK = re.compile(r"\b(1[0-2]|[1-9])\s*o'?\s*clock", re.IGNORECASE)


def parse_clock(text: str) -> int | None:
    """The first clock position in the text ("around the 2 o'clock direction" → 2), else None."""
    m = _CLOCK.search(text.replace("’", "'"))
    return int(m.group(1)) if m else None


def clock_success(pred: int, gt: int) -> tuple[bool, int]:
    """SpatialRGPT-Bench's direction rule: the circular difference in hours; success when it is at most 1."""
    diff = abs(gt - pred)
    err = min(diff, 12 - diff)
    return err <= 1, err
