"""Tags: `_manifests/tags/<tag>/current/link` holds the digest (last writer wins); `index/` keeps history."""

from __future__ import annotations

import asyncio
from typing import Protocol

from registry import paths
from registry.digests import Digest
from registry.errors import ErrorCode, RegistryError
from storage_backends import PathNotFound, StorageBackend

READS_AT_ONCE = 16


def manifest_unknown(name: str, reference: str) -> RegistryError:
    return RegistryError(ErrorCode.MANIFEST_UNKNOWN, detail={"name": name, "reference": reference})


class TagGuard(Protocol):
    def rule_protecting(self, name: str, tag: str) -> str | None:
        """A description of the rule that makes the tag immutable, or None when it may change."""


def tag_immutable(name: str, tag: str, rule: str, action: str) -> RegistryError:
    return RegistryError(
        ErrorCode.DENIED,
        detail={"name": name, "tag": tag, "rule": rule},
        message=f"tag {tag!r} of {name} is immutable and cannot be {action} ({rule})",
    )


class TagStore:
    def __init__(self, backend: StorageBackend, guard: TagGuard | None = None) -> None:
        self.backend = backend
        # Set by the GC feature from `immutable_tags` (registry/gc/setup.py).
        self.guard = guard

    def protecting_rule(self, name: str, tag: str) -> str | None:
        return None if self.guard is None else self.guard.rule_protecting(name, tag)

    async def check_can_set(self, name: str, tag: str, digest: Digest) -> None:
        """DENIED when `tag` is immutable and already names another digest (re-pushing the same one is fine)."""
        rule = self.protecting_rule(name, tag)
        if rule is None:
            return
        try:
            current = await self.resolve(name, tag)
        except RegistryError:
            return
        if current != digest:
            raise tag_immutable(name, tag, rule, "moved")

    def check_can_delete(self, name: str, tag: str) -> None:
        rule = self.protecting_rule(name, tag)
        if rule is not None:
            raise tag_immutable(name, tag, rule, "deleted")

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
        self.check_can_delete(name, tag)
        await self.backend.delete(paths.tag_dir(name, tag))

    async def delete_if_current(self, name: str, tag: str, digest: Digest) -> bool:
        """Untag only while the tag still names `digest` (GC's retention decided on that digest; a tag a client
        moved since is the client's). A push moving the tag between this read and the delete re-checks its tag
        after writing it (ManifestStore.put) and writes it again."""
        try:
            if await self.resolve(name, tag) != digest:
                return False
        except RegistryError:
            return False
        self.check_can_delete(name, tag)
        await self.backend.delete(paths.tag_dir(name, tag))
        return True

    async def all(self, name: str) -> list[str]:
        try:
            entries = await self.backend.list(paths.tags_dir(name))
        except PathNotFound:
            return []
        return sorted(e.path.rsplit("/", 1)[1] for e in entries if e.is_dir)

    async def tags_of(self, name: str, digest: Digest) -> list[str]:
        """Every tag of `name` that currently points at `digest`. Reads every tag's link (as Distribution does),
        several at a time: on S3 each read is a round trip."""
        limit = asyncio.Semaphore(READS_AT_ONCE)

        async def names_it(tag: str) -> bool:
            async with limit:
                try:
                    return await self.resolve(name, tag) == digest
                except RegistryError:
                    return False

        tags = await self.all(name)
        return [tag for tag, hit in zip(tags, await asyncio.gather(*(names_it(t) for t in tags)), strict=True) if hit]
