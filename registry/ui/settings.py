"""The `ui:` config section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from registry.durations import Seconds


class UiSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Serve the web UI at /ui/ (and redirect / there).")
    session_ttl: Seconds = Field(
        default=8 * 3600.0, ge=60, description="How long a sign-in lasts; signing out ends it at once everywhere."
    )
    page_size: int = Field(default=25, ge=5, le=200, description="Repositories per page of the list.")
