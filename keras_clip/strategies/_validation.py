"""Argument checks shared by the strategies, worded as Keras words its own."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any


def number(name: str, value: Any) -> float:
    """Returns `value` as a float, or raises TypeError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"`{name}` must be a number. Received: {name}={value!r} (of type {type(value).__name__})")
    return float(value)


def positive_finite(name: str, value: Any) -> float:
    """A number > 0 and < inf (a clipping threshold)."""
    result = number(name, value)
    if not (math.isfinite(result) and result > 0):
        raise ValueError(f"`{name}` must be a positive finite number. Received: {name}={value!r}")
    return result


def in_range(name: str, value: Any, low: float, high: float, *, closed: str = "both") -> float:
    """A number in an interval; `closed` is "both", "left", "right" or "neither"."""
    result = number(name, value)
    left = result >= low if closed in ("both", "left") else result > low
    right = result <= high if closed in ("both", "right") else result < high
    if not (left and right and math.isfinite(result)):
        lo = "[" if closed in ("both", "left") else "("
        hi = "]" if closed in ("both", "right") else ")"
        raise ValueError(f"`{name}` must be in {lo}{low:g}, {high:g}{hi}. Received: {name}={value!r}")
    return result


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """An int >= `minimum` (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an integer. Received: {name}={value!r} (of type {type(value).__name__})")
    if value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return value
