"""Field checks for the frozen config dataclasses; errors name the class and the field."""

import math
from typing import Any


def fail(owner: str, name: str, message: str):
    raise ValueError(f"{owner}.{name}: {message}")


def check_int(owner: str, name: str, value: Any, *, minimum: int):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        fail(owner, name, f"must be an integer >= {minimum}, got {value!r}")


def check_float(owner: str, name: str, value: Any, *, positive: bool, maximum: float | None = None):
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        fail(owner, name, f"must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        fail(owner, name, f"must be {'> 0' if positive else '>= 0'}, got {value!r}")
    if maximum is not None and value > maximum:
        fail(owner, name, f"must be <= {maximum}, got {value!r}")


def check_widths(owner: str, name: str, widths: tuple):
    """Hidden widths of an `eqx.nn.MLP`: positive and all equal."""
    if not all(isinstance(w, int) and w >= 1 for w in widths) or len(set(widths)) > 1:
        fail(owner, name, f"must be equal positive widths, got {widths}")
