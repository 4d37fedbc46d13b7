"""The `index:` config section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class IndexSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
