"""Blobs: one global content-addressed copy of every blob, made visible to a repository by a link."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from registry import paths
from registry.digests import Digest
from registry.errors import ErrorCode, RegistryError
from storage_backends import PathNotFound, StorageBackend

EXISTENCE_TTL = 1.0
EXISTENCE_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: Digest
    size: int


def blob_unknown(digest: Digest) -> RegistryError:
    return RegistryError(ErrorCode.BLOB_UNKNOWN, detail={"digest": str(digest)})


class BlobStore:
    def __init__(self, backend: StorageBackend, existence_ttl: float = EXISTENCE_TTL) -> None:
        self.backend = backend
        self._existence_ttl = existence_ttl
        # (repository, digest) -> (info, monotonic expiry): positive answers only, for blob GET/HEAD.
        self._seen: OrderedDict[tuple[str, Digest], tuple[BlobInfo, float]] = OrderedDict()

    async def _linked(self, name: str, digest: Digest) -> bool:
        """Distribution lets a repository see a blob through a layer link or a manifest revision link."""
        for link in (paths.layer_link(name, digest), paths.manifest_revision_link(name, digest)):
            try:
                target = await self.backend.get_content(link)
            except PathNotFound:
                continue
            if target.decode("ascii", "replace").strip() == str(digest):
                return True
        return False

    async def stat_global(self, digest: Digest) -> BlobInfo | None:
        try:
            info = await self.backend.stat(paths.blob_data(digest))
        except PathNotFound:
            return None
        return BlobInfo(digest, info.size)

    async def stat(self, name: str, digest: Digest) -> BlobInfo:
        """The blob as `name` sees it; BLOB_UNKNOWN when not linked there or when its data is gone."""
        if not await self._linked(name, digest):
            raise blob_unknown(digest)
        info = await self.stat_global(digest)
        if info is None:
            raise blob_unknown(digest)
        return info

    async def stat_recent(self, name: str, digest: Digest) -> BlobInfo:
        """`stat`, answered from a short-lived memory of blobs seen present (Distribution keeps a blob
        descriptor cache too). A link removed by another process may still answer for EXISTENCE_TTL seconds;
        one removed here is forgotten at once. Manifest validation and mounts always ask storage."""
        key = (name, digest)
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is not None and seen[1] > now:
            return seen[0]
        info = await self.stat(name, digest)
        self._seen[key] = (info, now + self._existence_ttl)
        self._seen.move_to_end(key)
        while len(self._seen) > EXISTENCE_CACHE_SIZE:
            self._seen.popitem(last=False)
        return info

    def forget(self, name: str, digest: Digest) -> None:
        self._seen.pop((name, digest), None)

    def read(self, digest: Digest, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        return self.backend.reader(paths.blob_data(digest), offset, length)

    async def read_all(self, digest: Digest) -> bytes:
        return await self.backend.get_content(paths.blob_data(digest))

    async def redirect_url(self, digest: Digest) -> str | None:
        return await self.backend.redirect_url(paths.blob_data(digest))

    async def link(self, name: str, digest: Digest) -> None:
        await self.backend.put_content(paths.layer_link(name, digest), str(digest).encode())

    async def unlink(self, name: str, digest: Digest) -> None:
        """Remove the repository's layer link; the data stays for other repositories (GC collects orphans)."""
        self.forget(name, digest)
        link = paths.layer_link(name, digest)
        if not await self.backend.exists(link):
            raise blob_unknown(digest)
        await self.backend.delete(paths.layer_link_dir(name, digest))

    async def mount(self, name: str, source: str, digest: Digest) -> BlobInfo | None:
        """Link a blob that `source` can see into `name`, or None when `source` cannot see it."""
        try:
            info = await self.stat(source, digest)
        except RegistryError:
            return None
        await self.link(name, digest)
        return info

    async def put_small(self, digest: Digest, data: bytes) -> None:
        """Store small content (a manifest) whose digest the caller has computed from `data`."""
        if await self.stat_global(digest) is None:
            await self.backend.put_content(paths.blob_data(digest), data, exclusive=True)
