"""The metadata index's interface: what the rest of the registry may call, and the records it answers with.

Kept small on purpose: an implementation over a database shared by many replicas fits behind it as well as the
embedded SQLite one does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

Visible = Callable[[str], bool]
"""Which repositories the caller may see; None where an argument of this type is optional means every one."""


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    """What the index knows of one manifest in one repository (content under a digest never changes)."""

    digest: str
    media_type: str
    artifact_type: str | None
    size: int
    """The manifest's bytes plus its config and layers; for an index, plus its children's sizes."""
    platforms: tuple[str, ...]
    """`os/architecture[/variant]`: from the image config, or from an index's children."""
    created: str | None
    labels: dict[str, str] = field(default_factory=dict)
    """Config labels and manifest annotations (the annotations win)."""
    pushed_at: float = 0.0


@dataclass(frozen=True, slots=True)
class TagRecord:
    tag: str
    digest: str
    pushed_at: float


@dataclass(frozen=True, slots=True)
class RepositorySnapshot:
    """One repository as storage holds it: every tag, every manifest revision."""

    name: str
    tags: tuple[TagRecord, ...]
    manifests: tuple[ManifestRecord, ...]


@dataclass(frozen=True, slots=True)
class TagSummary:
    tag: str
    manifest: ManifestRecord
    pushed_at: float


@dataclass(frozen=True, slots=True)
class RepositorySummary:
    name: str
    description: str | None
    pushed_at: float | None
    pulls: int
    manifest_count: int
    tags: tuple[TagSummary, ...]


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """`q` of the search API, parsed: every part must match (see registry/index/query.py)."""

    terms: tuple[str, ...] = ()
    labels: tuple[tuple[str, str | None], ...] = ()
    platforms: tuple[str, ...] = ()
    artifact_types: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    @property
    def filters_manifests(self) -> bool:
        return bool(self.labels or self.platforms or self.artifact_types or self.tags)


@dataclass(frozen=True, slots=True)
class SearchHit:
    repository: str
    description: str | None
    repository_pushed_at: float | None
    pulls: int
    manifest: ManifestRecord | None
    """The best match in the repository: tagged before untagged, then the latest pushed."""
    tags: tuple[str, ...]
    """The tags of that manifest (only those the query's `tag:` parts match, when it has any)."""


class IndexUnavailable(Exception):
    """The index cannot answer yet (its first build is running) or any more (its file failed)."""


class MetadataIndex(Protocol):
    @property
    def ready(self) -> bool:
        """Whether queries are answered from an index that is built and in line with storage."""

    async def catalog(self, last: str | None, limit: int | None, visible: Visible | None) -> list[str]:
        """Repository names after `last` in lexical order, at most `limit` (None: all) of those `visible` allows."""

    async def search(
        self, query: SearchQuery, last: str | None, limit: int, visible: Visible | None
    ) -> list[SearchHit]:
        """Ranked matches after the one named `last`, at most `limit`."""

    async def repository(self, name: str) -> RepositorySummary | None: ...
