"""The `quotas:` and `policy:` config sections."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from registry.durations import Seconds
from registry.sizes import Bytes


class QuotaRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repository: str = Field(min_length=1, max_length=256, description='A glob, as in access rules ("team/**").')
    bytes: Bytes = Field(description="`10GiB`, `500MB`, `1048576`: unique bytes its manifests and pushes reference.")


class PolicySettings(BaseModel):
    """Where rules, visibility, quotas, personal tokens and the audit log changed through the admin API live."""

    model_config = ConfigDict(extra="forbid")

    path: Path | None = Field(
        default=None,
        description="The SQLite file when `database.url` is not set. Default: `<root>/moorage/policy.sqlite` on the "
        "filesystem backend, a file per bucket in the temporary directory on S3 (set `database.url` to a "
        "PostgreSQL database for replicas).",
    )
    poll_interval: Seconds = Field(
        default=0.25, description="How often each process checks whether the rules changed (one tiny read)."
    )
    quota_warning: float = Field(
        default=0.8, gt=0, le=1, description="A repository past this fraction of its quota is warned about."
    )
    reservation_ttl: Seconds = Field(
        default=86400.0,
        description="A pushed blob no manifest references counts against its repository's quota this long.",
    )
