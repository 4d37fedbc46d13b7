"""The `auth:` and `access:` config sections (shapes fixed by the product)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HtpasswdSettings(_Section):
    path: Path


class TokenSettings(_Section):
    enabled: bool = False


class AuthSettings(_Section):
    """Present (even empty) = authentication on; absent = laptop mode, everything open."""

    htpasswd: HtpasswdSettings | None = None
    token: TokenSettings = TokenSettings()


class AccessRule(_Section):
    repository: str
    users: list[str]
    actions: list[str]
