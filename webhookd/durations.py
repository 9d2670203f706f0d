"""Durations as operators write them in TOML: "250ms", "10s", "5m", "2h", "1d"."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


def parse_duration(value: Any) -> float:
    """Seconds from a duration string; bare numbers are seconds (env vars and old configs)."""
    if isinstance(value, bool):
        raise ValueError("a duration is a string like '250ms', '10s', '5m', '2h' or '1d'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _PATTERN.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
        try:
            return parse_duration(float(value))
        except ValueError:
            pass
    raise ValueError(
        f"invalid duration {value!r}: write it like '250ms', '10s', '5m', '2h' or '1d'"
    )


def format_duration(seconds: float) -> str:
    """The shortest exact spelling, so check-config prints what an operator would write."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{round(seconds * 1000, 3):g}ms"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
