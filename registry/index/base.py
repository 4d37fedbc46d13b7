"""The metadata index's interface: what the rest of the registry may call, and the records it answers with.

Kept small on purpose: an implementation over a database shared by many replicas fits behind it as well as the
embedded SQLite one does.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from registry.errors import RegistryError
from registry.names import validate_name

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
    blobs: tuple[tuple[str, int], ...] = ()
    """What the manifest references besides itself: an image's config and layers, an index's children, (digest,
    size) as its descriptors declare them; and every other digest GC's lenient reading finds (size 0)."""
    manifest_bytes: int = 0
    """The manifest's own bytes."""
    subject: str | None = None
    """The manifest it refers to (a signature's, an SBOM's image)."""


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
    pulls: int = 0
    """Pulls of the manifest by this tag's name."""


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


BrowseOrder = Literal["relevance", "name", "pushed", "pulls", "size", "tags"]
BROWSE_ORDERS: tuple[BrowseOrder, ...] = ("relevance", "name", "pushed", "pulls", "size", "tags")


@dataclass(frozen=True, slots=True)
class RepositoryRow:
    """One repository in a listing: its own row, kept up to date by every write (no aggregate at read time)."""

    name: str
    description: str | None
    pushed_at: float | None
    pulls: int
    tag_count: int
    size: int
    """The sum of its image manifests' sizes (manifest, config and layers): logical bytes, a layer shared by two
    images counted twice; `moorage du` and the UI's storage page count unique bytes."""


@dataclass(frozen=True, slots=True)
class BrowsePage:
    rows: tuple[RepositoryRow, ...]
    next_cursor: str | None
    """Opaque: what `browse` takes as `after` for the next page; None on the last page."""


@dataclass(frozen=True, slots=True)
class RepositoryBytes:
    name: str
    logical_bytes: int
    """Each blob its manifests reference counted once (the manifests, configs and layers)."""
    manifests: int
    blobs: int
    tags: int


@dataclass(frozen=True, slots=True)
class UsageSummary:
    """Storage accounting from the index's reference counts (what `moorage du` measures by reading storage)."""

    repositories: int
    logical_bytes: int
    physical_bytes: int
    """Each blob referenced by any of the repositories counted once."""
    largest: tuple[RepositoryBytes, ...]

    @property
    def saved_bytes(self) -> int:
        return max(self.logical_bytes - self.physical_bytes, 0)


class InvalidCursor(ValueError):
    """A `browse` cursor this index did not make (or made for another order)."""


def encode_cursor(key: object, name: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([key, name], separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, order: BrowseOrder) -> tuple[Any, str] | None:
    """The (sort key, name) a cursor holds; raises InvalidCursor for anything `encode_cursor` did not make."""
    if not cursor:
        return None
    try:
        if len(cursor) > 2048:
            raise ValueError("too long")
        key, name = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, binascii.Error):
        raise InvalidCursor("not a cursor of this listing") from None
    expected: tuple[type, ...] = (str,) if order == "name" else (int, float)
    if not isinstance(name, str) or isinstance(key, bool) or not isinstance(key, expected):
        raise InvalidCursor("not a cursor of this listing")
    if isinstance(key, int) and not -(2**63) <= key < 2**63:
        raise InvalidCursor("not a cursor of this listing")  # beyond what any counter of the index holds
    try:
        validate_name(name)  # what every cursor names: a repository (a lone surrogate, a NUL... are not)
        if isinstance(key, str):
            validate_name(key)
    except RegistryError:
        raise InvalidCursor("not a cursor of this listing") from None
    return key, name


class IndexUnavailable(Exception):
    """The index cannot answer yet (its first build is running) or any more (its file failed)."""


class MetadataIndex(Protocol):
    @property
    def ready(self) -> bool:
        """Whether queries are answered from an index that is built and in line with storage."""

    def refuses_writes(self) -> str | None:
        """Why pushes and deletes must wait for now (None: they may go ahead)."""
        ...

    async def catalog(self, last: str | None, limit: int | None, visible: Visible | None) -> list[str]:
        """Repository names after `last` in lexical order, at most `limit` (None: all) of those `visible` allows."""

    async def search(
        self, query: SearchQuery, last: str | None, limit: int, visible: Visible | None
    ) -> list[SearchHit]:
        """Ranked matches after the one named `last`, at most `limit`."""

    async def repository(self, name: str) -> RepositorySummary | None: ...

    async def browse(
        self, query: SearchQuery, order: BrowseOrder, after: str | None, limit: int, visible: Visible | None
    ) -> BrowsePage:
        """Repositories matching `query` in `order` (`relevance`: the search's ranking; `pushed`, `pulls`, `size`
        and `tags`: the largest first), the page after the cursor `after`, at most `limit` rows."""

    async def usage(self, visible: Visible | None, largest: int) -> UsageSummary:
        """Logical and physical bytes of the repositories `visible` admits, and the `largest` of them."""

    async def sharing(self, name: str, blobs: list[str], visible: Visible | None) -> dict[str, int]:
        """For each of these blobs, how many other repositories `visible` admits reference it in a manifest."""
