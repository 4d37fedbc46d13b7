"""Repository names and tags as the distribution spec defines them."""

from __future__ import annotations

import re

from registry.errors import ErrorCode, RegistryError

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
# `\Z`, not `$`: `$` also matches before a final newline, which no name or tag may end with.
NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*\Z")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}\Z")
MAX_NAME_LENGTH = 255


def validate_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not NAME_RE.match(name):
        raise RegistryError(ErrorCode.NAME_INVALID, detail={"name": name})
    return name


def validate_tag(tag: str) -> str:
    if not TAG_RE.match(tag):
        raise RegistryError(ErrorCode.TAG_INVALID, detail={"tag": tag}, message="invalid tag")
    return tag


def is_valid_name(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and bool(NAME_RE.match(name))
