"""Strict numbers from clients: form fields, query parameters and JSON values.

``str.isdigit()`` is true for "²", "٣" and "１２" (which ``int()`` refuses or reads as
another number) and ``float()`` reads Arabic-Indic digits: a number a client sends is
ASCII digits only, range-checked, or a 400 naming the field.
"""

from __future__ import annotations

import math
import re

from .errors import BadRequest

_INTEGER = re.compile(r"-?[0-9]{1,18}")
_NUMBER = re.compile(r"-?[0-9]{1,18}(?:\.[0-9]{1,18})?")


def parse_int(value: object, name: str, low: int, high: int) -> int:
    """An integer from ``low`` to ``high``: a JSON integer, or a string of ASCII digits."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip(" \t")):
        number = int(value)
    if number is None or not low <= number <= high:
        raise BadRequest(f"{name}: expected an integer from {low} to {high}")
    return number


def parse_number(value: object, name: str, low: float, high: float, example: str = "") -> float:
    """A number from ``low`` to ``high``: a JSON number, or ASCII digits with an optional fraction."""
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and _NUMBER.fullmatch(value.strip(" \t")):
        number = float(value)
    if number is None or not math.isfinite(number) or not low <= number <= high:
        raise BadRequest(f"{name}: expected a number from {low:g} to {high:g}{example}")
    return number
