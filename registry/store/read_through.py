"""The seam through which content another registry holds enters this store when a client asks for it.

The store calls a `ReadThrough` (registry/proxy implements it) on the read paths a client takes: before a manifest
is looked up, and when a blob a repository does not link is asked for. What it brings in goes through the store's
own writes (a manifest put, an upload), so it is verified, deduplicated and announced by events like any push.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Protocol

from registry.digests import Digest

if TYPE_CHECKING:
    from registry.store.blobs import BlobInfo
    from registry.store.registry import Registry


class ReadThrough(Protocol):
    def bind(self, registry: Registry) -> None:
        """The store the content is brought into (called once, by the Registry)."""

    async def manifest(self, name: str, reference: str) -> Digest | None:
        """Before `name`'s `reference` is read: make the store's copy current (fetch what is missing, check a tag
        grown older than its time to live), or raise the spec's error when neither the upstream nor the cache can
        answer; the digest the reference names in the store now (which it need not read again). None at once for a
        name no upstream covers."""

    async def blob(self, name: str, digest: Digest, *, fetch: bool) -> BlobInfo | None:
        """A blob `name` does not link: link the registry's own copy when there is one; else its size upstream,
        and with `fetch` a fill under way that `spooled` streams. None: no upstream covers `name`."""

    def spooled(self, digest: Digest, offset: int, length: int | None) -> AsyncIterator[bytes] | None:
        """The bytes of a blob being fetched, as they arrive (None: no fetch of it is under way here)."""

    async def origins(self, names: Sequence[str]) -> dict[str, str]:
        """Which of `names` are caches, each with the name of its upstream (for listings that say so: as far as
        storage answers)."""

    async def is_cache(self, name: str) -> bool:
        """Whether `name` is a cache of an upstream; raises StorageError when storage cannot say."""
