"""Durations in config: seconds as a number, or Go-style text as Distribution's config has them (`500ms`, `90m`)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> Any:
    """Seconds for `0s`, `500ms`, `1.5s`, `2m`, `1h`, `7d`; other values are left for the validator to refuse."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    for unit in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * _UNITS[unit]
    return text


Seconds = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
"""A positive duration."""

NonNegativeSeconds = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
"""A duration that may be zero (`0s`)."""
