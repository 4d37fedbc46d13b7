"""The `index:` config section."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from registry.durations import Seconds


class DatabaseSettings(BaseModel):
    """The `database:` config section: where the metadata index lives."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        default=None,
        description="`sqlite:///ABSOLUTE/PATH` or `postgresql://USER:PASSWORD@HOST:PORT/DATABASE` (one database "
        "shared by every replica: a new replica is ready without rebuilding). Default: SQLite at `index.path`.",
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str | None) -> str | None:
        if url is None or url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            return url
        raise ValueError("database.url: sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DATABASE")

    def target(self) -> Path | str | None:
        """The SQLite file, the PostgreSQL URL, or None (the default file)."""
        if self.url is None:
            return None
        if self.url.startswith("sqlite:///"):
            return Path("/" + self.url.removeprefix("sqlite:///").lstrip("/"))
        return self.url


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
    reconcile_interval: Seconds = Field(
        default=3600.0,
        ge=1,
        description="How often the index compares its repositories with storage's (one listing) and re-reads those "
        "that differ: repositories another tool wrote or removed without change records.",
    )
