"""Tags: `_manifests/tags/<tag>/current/link` holds the digest (last writer wins); `index/` keeps history."""

from __future__ import annotations

from registry import paths
from registry.digests import Digest
from registry.errors import ErrorCode, RegistryError
from storage_backends import PathNotFound, StorageBackend


def manifest_unknown(name: str, reference: str) -> RegistryError:
    return RegistryError(ErrorCode.MANIFEST_UNKNOWN, detail={"name": name, "reference": reference})


class TagStore:
    def __init__(self, backend: StorageBackend) -> None:
        self.backend = backend

    async def resolve(self, name: str, tag: str) -> Digest:
        try:
            raw = await self.backend.get_content(paths.tag_current_link(name, tag))
        except PathNotFound:
            raise manifest_unknown(name, tag) from None
        try:
            return Digest.parse(raw.decode("ascii").strip())
        except (UnicodeDecodeError, RegistryError):
            raise manifest_unknown(name, tag) from None

    async def set(self, name: str, tag: str, digest: Digest) -> None:
        await self.backend.put_content(paths.tag_index_link(name, tag, digest), str(digest).encode())
        await self.backend.put_content(paths.tag_current_link(name, tag), str(digest).encode())

    async def delete(self, name: str, tag: str) -> None:
        if not await self.backend.exists(paths.tag_current_link(name, tag)):
            raise manifest_unknown(name, tag)
        await self.backend.delete(paths.tag_dir(name, tag))

    async def all(self, name: str) -> list[str]:
        try:
            entries = await self.backend.list(paths.tags_dir(name))
        except PathNotFound:
            return []
        return sorted(e.path.rsplit("/", 1)[1] for e in entries if e.is_dir)

    async def tags_of(self, name: str, digest: Digest) -> list[str]:
        """Every tag of `name` that currently points at `digest`."""
        found = []
        for tag in await self.all(name):
            try:
                if await self.resolve(name, tag) == digest:
                    found.append(tag)
            except RegistryError:
                continue
        return found
