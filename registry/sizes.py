"""Sizes in config files and API bodies: `10GiB`, `500MB`, `1048576`."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, Field

_SIZE_RE = re.compile(r"^\s*(\d+)\s*(|B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)\s*$")
_UNITS = {"": 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "KB": 10**3, "MB": 10**6}
_UNITS.update({"GB": 10**9, "TB": 10**12})


def parse_bytes(value: object) -> object:
    """`10GiB`, `500MB`, `1048576`; anything else is left for the validator to refuse."""
    if isinstance(value, bool):
        raise ValueError("a size, not true or false")
    if isinstance(value, str) and (match := _SIZE_RE.match(value)):
        return int(match.group(1)) * _UNITS[match.group(2)]
    return value


Bytes = Annotated[int, BeforeValidator(parse_bytes), Field(gt=0, le=2**62)]
BytesOrZero = Annotated[int, BeforeValidator(parse_bytes), Field(ge=0, le=2**62)]
