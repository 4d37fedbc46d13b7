"""Tags: `_manifests/tags/<tag>/current/link` holds the digest (last writer wins); `index/` keeps history."""

from __future__ import annotations

import asyncio
import contextlib

from registry import paths
from registry.digests import Digest
from registry.errors import ErrorCode, RegistryError
from registry.store.events import Event, EventBus, EventType
from registry.store.tag_policy import TagPolicy
from storage_backends import PathNotFound, StorageBackend

READS_AT_ONCE = 16


def manifest_unknown(name: str, reference: str) -> RegistryError:
    return RegistryError(ErrorCode.MANIFEST_UNKNOWN, detail={"name": name, "reference": reference})


def tag_immutable(name: str, tag: str, rule: str, action: str) -> RegistryError:
    return RegistryError(
        ErrorCode.DENIED,
        detail={"name": name, "tag": tag, "rule": rule},
        message=f"tag {tag!r} of {name} is immutable and cannot be {action} ({rule})",
    )


class TagStore:
    def __init__(self, backend: StorageBackend, events: EventBus, policy: TagPolicy | None = None) -> None:
        self.backend = backend
        self.events = events
        self.policy = policy or TagPolicy()
        self._complete: set[str] = set()  # repositories whose every tag is listed on its revision

    def protecting_rule(self, name: str, tag: str) -> str | None:
        return self.policy.rule_protecting(name, tag)

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

    async def write(self, name: str, tag: str, digest: Digest) -> None:
        """Point `tag` at `digest` in storage; the caller emits the event (a manifest PUT emits its own)."""
        await asyncio.gather(self.mark(name, tag, digest), self.record(name, tag, digest))
        await self.point(name, tag, digest)

    async def mark(self, name: str, tag: str, digest: Digest) -> None:
        """List the tag on the revision, before `point`: a tag never names a revision that does not list it. A mark
        nothing points at is harmless (each is confirmed by reading its tag), so it may go with the revision link. Not
        flushed to disk on its own: an empty file is all metadata, which a journaling filesystem commits no later
        than the durable write of the tag's link that follows it."""
        await self.backend.put_content(paths.revision_tag(name, digest, tag), b"", durable=False)

    async def record(self, name: str, tag: str, digest: Digest) -> None:
        """The tag's history entry (Distribution's `index/`, which nothing here reads), before `point`; it makes the
        tag's directory, so not before the manifest is known to be accepted."""
        await self.backend.put_content(paths.tag_index_link(name, tag, digest), str(digest).encode(), durable=False)

    async def point(self, name: str, tag: str, digest: Digest) -> None:
        await self.backend.put_content(paths.tag_current_link(name, tag), str(digest).encode())

    async def remove(self, name: str, tag: str, digest: Digest | None = None) -> None:
        """Take the tag out of storage and say so (the caller checked the policy and prepared the change)."""
        await self.backend.delete(paths.tag_dir(name, tag))
        self.events.emit(Event(EventType.TAG_DELETED, name, str(digest or ""), tag=tag))

    async def delete(self, name: str, tag: str) -> None:
        # The policy first: its refusal depends on the tag's name alone, so that it never tells a caller who may
        # delete but not pull whether the tag exists (403 for a protected name, whether or not it is there).
        self.check_can_delete(name, tag)
        digest = await self.resolve(name, tag)
        planned = await self.events.prepare(name, tags=[tag])
        with self.events.ending(planned):
            await self.remove(name, tag, digest)

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
        planned = await self.events.prepare(name, tags=[tag])
        with self.events.ending(planned):
            await self.remove(name, tag, digest)
        return True

    async def all(self, name: str) -> list[str]:
        try:
            entries = await self.backend.list(paths.tags_dir(name))
        except PathNotFound:
            return []
        return sorted(e.path.rsplit("/", 1)[1] for e in entries if e.is_dir)

    def forget_repository(self, name: str) -> None:
        self._complete.discard(name)

    async def tags_of(self, name: str, digest: Digest) -> list[str]:
        """Every tag of `name` that currently points at `digest`: the tags the revision lists, each read to confirm
        (one may have moved on). The cost follows the revision's tags, not the repository's.

        Every replica must run a release that lists tags on revisions before any of them deletes by digest or
        collects untagged manifests: a tag written by an older release after the repository's one-time listing is
        not found here (README, upgrading)."""
        if (
            name not in self._complete
            and not await self.backend.exists(paths.revision_tags_complete(name))
            and not await self._list_every_tag_on_its_revision(name)
        ):
            return []
        self._complete.add(name)
        try:
            entries = await self.backend.list(paths.revision_tags_dir(name, digest))
        except PathNotFound:
            return []
        candidates = sorted(e.path.rsplit("/", 1)[1] for e in entries if not e.is_dir)
        current = await self._current(name, candidates)
        return [tag for tag in candidates if current.get(tag) == digest]

    async def _current(self, name: str, tags: list[str]) -> dict[str, Digest]:
        """What each of `tags` points at (those that exist), read several at a time: on S3 each read is a round
        trip."""
        limit = asyncio.Semaphore(READS_AT_ONCE)
        found: dict[str, Digest] = {}

        async def read(tag: str) -> None:
            async with limit:
                with contextlib.suppress(RegistryError):
                    found[tag] = await self.resolve(name, tag)

        await asyncio.gather(*(read(tag) for tag in tags))
        return found

    async def _list_every_tag_on_its_revision(self, name: str) -> bool:
        """Once per repository whose tags were written before revisions listed them: read every tag and list it on
        its revision. False when the repository has no tags (nothing to list, nothing written: a repository deleted
        meanwhile must not get a file back)."""
        tags = await self.all(name)
        if not tags:
            return False
        current = await self._current(name, tags)
        limit = asyncio.Semaphore(READS_AT_ONCE)

        async def mark(tag: str, digest: Digest) -> None:
            async with limit:
                await self.mark(name, tag, digest)

        await asyncio.gather(*(mark(tag, digest) for tag, digest in current.items()))
        await self.backend.put_content(paths.revision_tags_complete(name), b"")
        return True
