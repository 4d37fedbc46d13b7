"""Content digests: parsing, validation and hashing (sha256 and sha512)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from registry.errors import ErrorCode, RegistryError

HEX_LENGTHS = {"sha256": 64, "sha512": 128}
DEFAULT_ALGORITHM = "sha256"
# \Z, not $: "$" also matches before a final newline, which made "sha256:<hex>\n" (a %0A in a URL) a digest.
_DIGEST_RE = re.compile(r"([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)\Z")
_LOWER_HEX_RE = re.compile(r"[0-9a-f]*\Z")


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...
    def copy(self) -> Hasher: ...


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def parse(cls, value: str) -> Digest:
        """Parse "alg:hex"; raise DIGEST_INVALID for malformed or unsupported digests."""
        match = _DIGEST_RE.match(value)
        if not match:
            raise RegistryError(
                ErrorCode.DIGEST_INVALID, detail=f"invalid digest: {value!r}", message="invalid digest format"
            )
        algorithm, hex_part = match.groups()
        if algorithm not in HEX_LENGTHS:
            raise RegistryError(
                ErrorCode.DIGEST_INVALID,
                detail=f"unsupported digest algorithm: {algorithm}",
                message="unsupported digest algorithm",
            )
        if len(hex_part) != HEX_LENGTHS[algorithm] or not _LOWER_HEX_RE.match(hex_part):
            raise RegistryError(
                ErrorCode.DIGEST_INVALID,
                detail=f"invalid {algorithm} digest: {value!r}",
                message="invalid digest format",
            )
        return cls(algorithm, hex_part)

    @classmethod
    def is_digest(cls, value: str) -> bool:
        return ":" in value

    @classmethod
    def of(cls, data: bytes, algorithm: str = DEFAULT_ALGORITHM) -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())


def new_hasher(algorithm: str = DEFAULT_ALGORITHM) -> Hasher:
    if algorithm not in HEX_LENGTHS:
        raise RegistryError(
            ErrorCode.DIGEST_INVALID,
            detail=f"unsupported digest algorithm: {algorithm}",
            message="unsupported digest algorithm",
        )
    return hashlib.new(algorithm)
