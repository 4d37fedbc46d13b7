"""The `index:` config section."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from registry.durations import Seconds


class IndexSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=True, description="Keep the metadata index: catalog and search read it instead of walking storage."
    )
    path: Path | None = Field(
        default=None,
        description="The SQLite file (derived data, rebuilt when missing). Default: `<root>/moorage/index.sqlite` "
        "on the filesystem backend, a file per bucket in the temporary directory on S3.",
    )
    poll_interval: Seconds = Field(
        default=1.0, description="How often each process reads the change records other processes and replicas wrote."
    )
    settle: Seconds = Field(
        default=30.0,
        description="A change record is read again once it is this old (a write slower than that, or clocks further "
        "apart between replicas, would be missed).",
    )
    changes_retention: Seconds = Field(
        default=3600.0,
        description="Change records older than this are pruned; an index that saw none for longer is rebuilt.",
    )
    rebuild_concurrency: int = Field(default=8, ge=1, le=256, description="Repositories read at once by a rebuild.")
