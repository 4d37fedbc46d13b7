"""The `gc:`, `uploads:`, `retention:` and `immutable_tags:` config sections."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GcSettings(_Section):
    pass


class UploadsSettings(_Section):
    pass


class RetentionRule(_Section):
    repository: str


class ImmutableTagRule(_Section):
    repository: str
