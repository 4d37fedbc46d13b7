"""Manifests: stored byte-exact as blobs, made visible by revision links, named by tags."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from dataclasses import dataclass

from registry import media_types, paths
from registry.digests import DEFAULT_ALGORITHM, Digest
from registry.errors import ErrorCode, RegistryError
from registry.names import TAG_RE, validate_tag
from registry.store.blobs import BlobStore
from registry.store.events import Event, EventBus, EventType
from registry.store.manifest_format import (
    Descriptor,
    ParsedManifest,
    decode_stored_json,
    parse_manifest,
    read_stored_manifest,
)
from registry.store.read_through import ReadThrough
from registry.store.referrers import ReferrerStore
from registry.store.tags import TagStore, manifest_unknown
from storage_backends import PathNotFound, StorageBackend

CACHE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoredManifest:
    digest: Digest
    media_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class PutResult:
    manifest: StoredManifest
    parsed: ParsedManifest
    tags: tuple[str, ...]


class _ManifestCache:
    """Manifests by digest. Content under a digest never changes, so entries never go stale."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries: OrderedDict[Digest, StoredManifest] = OrderedDict()

    def get(self, digest: Digest) -> StoredManifest | None:
        entry = self._entries.get(digest)
        if entry is not None:
            self._entries.move_to_end(digest)
        return entry

    def put(self, manifest: StoredManifest) -> None:
        if manifest.digest in self._entries or len(manifest.data) > self._max_bytes // 8:
            return
        self._entries[manifest.digest] = manifest
        self._bytes += len(manifest.data)
        while self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted.data)


def _media_type_of_stored(data: bytes) -> str | None:
    """The media type a stored manifest declares, or what its shape says; lenient (it was accepted once)."""
    body = decode_stored_json(data)
    if not isinstance(body, dict):
        return None
    declared = body.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if body.get("schemaVersion") == 1:
        return media_types.DOCKER_SCHEMA1_SIGNED if "signatures" in body else media_types.DOCKER_SCHEMA1
    return media_types.OCI_INDEX if "manifests" in body else None


class ManifestStore:
    def __init__(
        self,
        backend: StorageBackend,
        blobs: BlobStore,
        tags: TagStore,
        referrers: ReferrerStore,
        events: EventBus,
        max_bytes: int,
        read_through: ReadThrough | None = None,
    ) -> None:
        self.backend = backend
        self.events = events
        self.read_through = read_through
        self.blobs = blobs
        self.tags = tags
        self.referrers = referrers
        self.max_bytes = max_bytes
        self._cache = _ManifestCache()

    async def resolve(self, name: str, reference: str) -> Digest:
        """The digest a reference names in `name`; MANIFEST_UNKNOWN when there is none."""
        if Digest.is_digest(reference):
            digest = Digest.parse(reference)
            if not await self.backend.exists(paths.manifest_revision_link(name, digest)):
                raise manifest_unknown(name, reference)
            return digest
        if not TAG_RE.match(reference):
            # A reference no tag can have names nothing here: unknown (what the OCI conformance suite expects
            # of GET and HEAD); a PUT still refuses such a tag with TAG_INVALID.
            raise manifest_unknown(name, reference)
        return await self.tags.resolve(name, reference)

    async def get(self, name: str, reference: str) -> StoredManifest:
        # A proxied repository: what the upstream has, cached (and the digest it names, already read).
        known = await self.read_through.manifest(name, reference) if self.read_through is not None else None
        digest = known or await self.resolve(name, reference)
        try:
            return await self.load(name, digest)
        except PathNotFound:
            raise manifest_unknown(name, reference) from None

    async def pull(self, name: str, reference: str) -> StoredManifest:
        """`get` for a client that takes the content (a GET, not a HEAD): counted as a pull."""
        manifest = await self.get(name, reference)
        if self.events.wants(EventType.MANIFEST_PULLED):
            tag = "" if Digest.is_digest(reference) else reference
            self.events.emit(
                Event(
                    EventType.MANIFEST_PULLED, name, str(manifest.digest), tag, manifest.media_type, len(manifest.data)
                )
            )
        return manifest

    async def load(self, name: str, digest: Digest) -> StoredManifest:
        """The manifest content by digest, without a visibility check. Raises PathNotFound."""
        cached = self._cache.get(digest)
        if cached is not None:
            return cached
        data = await self.blobs.read_all(digest)
        media_type = _media_type_of_stored(data)
        if media_type is None:
            try:
                raw = await self.backend.get_content(paths.manifest_media_type(name, digest))
                # Written by us, another registry or a hand: not necessarily a media type (the index bounds it).
                media_type = raw.decode("utf-8", "replace").strip() or media_types.OCI_MANIFEST
            except PathNotFound:
                media_type = media_types.OCI_MANIFEST
        manifest = StoredManifest(digest, media_type, data)
        self._cache.put(manifest)
        return manifest

    async def put(
        self,
        name: str,
        reference: str,
        data: bytes,
        content_type: str,
        extra_tags: tuple[str, ...] = (),
        *,
        cached: bool = False,
    ) -> PutResult:
        """Store a manifest and tag it. `cached`: a copy of an upstream's (registry/proxy), whose blobs and children
        come into the repository when they are first pulled, so they need not be there yet."""
        if len(data) > self.max_bytes:
            raise too_large(len(data), self.max_bytes)
        tags = list(extra_tags)
        if Digest.is_digest(reference):
            expected = Digest.parse(reference)
            digest = Digest.of(data, expected.algorithm)
            if digest != expected:
                raise RegistryError(
                    ErrorCode.DIGEST_INVALID,
                    detail={"expected": str(expected), "actual": str(digest)},
                    message="manifest digest does not match the reference",
                )
        else:
            tags.insert(0, validate_tag(reference))
            digest = Digest.of(data, DEFAULT_ALGORITHM)
        for tag in tags:
            validate_tag(tag)
        parsed = parse_manifest(data, content_type)
        unique = tuple(dict.fromkeys(tags))
        # Four rounds (what one round holds is independent; on S3 each round costs one round trip):
        # 1. the checks, and meanwhile what lies outside the repository: the announcement of the change (the index
        #    records it for every replica) and the content (content-addressed: kept only if some revision links it).
        #    Nothing is written under the repository before the checks pass: a refused push leaves no repository;
        # 2. the revision link, which makes the manifest part of the repository, with the tags' marks on the
        #    revision (confirmed by reading the tag before any use) and their history;
        # 3. the tags; 4. the second look (`_confirm`).
        announcing = asyncio.ensure_future(self.events.prepare(name, tags=unique, manifests=[str(digest)]))
        first = await asyncio.gather(
            *(self.tags.check_can_set(name, tag, digest) for tag in unique),
            *(() if cached else (self._check_references(name, parsed, str(digest), len(data)),)),
            announcing,
            self.blobs.put_small(digest, data),
            return_exceptions=True,
        )
        for outcome in first:  # refused (or failed) only once every write of the round is done: none left running
            if isinstance(outcome, BaseException):
                raise outcome
        planned = announcing.result()
        with self.events.ending(planned):
            if not parsed.has_media_type_field:  # read via the revision link: in place before it (rare: old clients)
                await self.backend.put_content(paths.manifest_media_type(name, digest), parsed.media_type.encode())
            link = paths.manifest_revision_link(name, digest)
            revision = asyncio.ensure_future(self.backend.put_content(link, str(digest).encode(), exclusive=True))
            await asyncio.gather(
                revision,
                *(self.tags.mark(name, tag, digest) for tag in unique),
                *(self.tags.record(name, tag, digest) for tag in unique),
            )
            created = revision.result()
            if parsed.subject is not None:
                await self.referrers.add(name, parsed.subject.digest, digest)
            await asyncio.gather(*(self.tags.point(name, tag, digest) for tag in unique))
            await self._confirm(name, digest, data, parsed, unique, created, cached)
            manifest = StoredManifest(digest, parsed.media_type, data)
            self._cache.put(manifest)
            for tag in unique or ("",):
                self.events.emit(Event(EventType.MANIFEST_PUSHED, name, str(digest), tag, parsed.media_type, len(data)))
            for tag in unique:
                self.events.emit(Event(EventType.TAG_SET, name, str(digest), tag, parsed.media_type, len(data)))
        return PutResult(manifest, parsed, unique)

    async def _check_references(self, name: str, parsed: ParsedManifest, digest: str, size: int) -> None:
        """Every blob and child manifest must already be in the repository (a subject need not be), and the
        repository must have room for what the manifest references (quotas: the stored sizes, not the claimed)."""
        blobs = [self._check_blob(name, d) for d in (parsed.config, *parsed.layers) if d is not None]
        children = [self._check_child(name, d) for d in parsed.children]
        found, _ = await asyncio.gather(asyncio.gather(*blobs), asyncio.gather(*children))
        if self.blobs.admissions:
            references = [(digest, size), *(pair for pair in found if pair is not None)]
            await self.blobs.admissions.check_references(name, references)

    async def _check_blob(self, name: str, descriptor: Descriptor) -> tuple[str, int] | None:
        if _is_foreign(descriptor):
            return None
        try:
            info = await self.blobs.stat(name, descriptor.digest, touch=True)
        except RegistryError:
            raise RegistryError(ErrorCode.MANIFEST_BLOB_UNKNOWN, detail={"digest": str(descriptor.digest)}) from None
        return str(descriptor.digest), info.size

    async def _check_child(self, name: str, descriptor: Descriptor) -> None:
        if (
            not await self.backend.exists(paths.manifest_revision_link(name, descriptor.digest))
            or await self.blobs.present(descriptor.digest, touch=True) is None
        ):
            raise RegistryError(
                ErrorCode.MANIFEST_BLOB_UNKNOWN,
                detail={"digest": str(descriptor.digest)},
                message="manifest references a child manifest unknown to the repository",
            )

    async def _confirm(
        self,
        name: str,
        digest: Digest,
        data: bytes,
        parsed: ParsedManifest,
        tags: tuple[str, ...],
        created: bool,
        cached: bool = False,
    ) -> None:
        """Look again, once the revision and tags are written, at what GC or a repository deletion may have
        removed since the checks. Each of them looks again after removing, too (registry/gc/collector.py,
        registry/gc/repositories.py), so one of the two sides always sees the other's write.

        - From the revision link on, GC's marking sees this manifest: a blob GC set aside before is brought back
          from quarantine here. One deleted for good (the PUT outlived GC's settle period) means the manifest
          cannot stand.
        - A blob link or child manifest of the repository gone: the repository was deleted under the push.
        In both cases the push fails and takes back what it wrote: never a tag whose content is gone. (Not for a
          `cached` copy of an upstream's manifest, whose content comes when first pulled.)
        - The revision link or a tag gone (GC found the manifest untagged before the tag landed; retention
          removed the tag as this push moved it): written again, and the blob links looked at once more, since
          a repository deletion may have passed between the first look and the rewrite."""
        blobs = [d.digest for d in (parsed.config, *parsed.layers) if d is not None and not _is_foreign(d)]
        children = [d.digest for d in parsed.children]
        if cached:
            blobs, children = [], []
        # Every look in one round of reads (on S3 each is a round trip; they are independent).
        present, manifest_present, unlinked, revision_present, missing = await asyncio.gather(
            asyncio.gather(*(self.blobs.present(d) for d in [*blobs, *children])),
            self.blobs.present(digest),
            self._unlinked(name, blobs, children),
            self.backend.exists(paths.manifest_revision_link(name, digest)),
            asyncio.gather(*(self._tag_missing(name, tag) for tag in tags)),
        )
        gone = [d for d, info in zip([*blobs, *children], present, strict=True) if info is None]
        if manifest_present is None:
            await self.blobs.put_small(digest, data)
        if not unlinked and not gone:
            vanished = [tag for tag, lost in zip(tags, missing, strict=True) if lost]
            if not await self._rewrite_vanished(name, digest, tags, revision_present, vanished):
                return
            unlinked = await self._unlinked(name, blobs, children)
            if not unlinked:
                return
        for tag in tags:
            with contextlib.suppress(RegistryError):
                if await self.tags.resolve(name, tag) == digest:
                    await self.backend.delete(paths.tag_dir(name, tag))
        if created or unlinked:
            await self.backend.delete(paths.manifest_revision_dir(name, digest))
            self.blobs.forget(name, digest)
        if unlinked:  # the repository was deleted: what this push wrote beside the revision goes too
            await self.backend.delete(paths.revision_tags_dir(name, digest))
            await self._drop_if_empty(name)
        if unlinked:
            raise RegistryError(
                ErrorCode.MANIFEST_BLOB_UNKNOWN,
                detail={"digest": str(unlinked[0])},
                message="the repository's blobs were removed during the push (repository deleted?); push again",
            )
        raise RegistryError(
            ErrorCode.MANIFEST_BLOB_UNKNOWN,
            detail={"digest": str(gone[0])},
            message="a blob the manifest references was garbage-collected during the push; push it again",
        )

    async def _drop_if_empty(self, name: str) -> None:
        """The directories a push taken back re-created in a deleted repository (a filesystem keeps them, and they
        would make it a repository again): removed when no file is left in them. Not the upload area, which makes
        no repository: an upload session started meanwhile must never lose its chunks before its start record (see
        RepositoryStore._end_upload_sessions)."""
        areas = [area for area in paths.repository_areas(name) if area != paths.uploads_dir(name)]
        for area in areas:
            async for _ in self.backend.walk(area):
                return
        for area in areas:
            await self.backend.delete(area)

    async def _tag_missing(self, name: str, tag: str) -> bool:
        try:
            await self.tags.resolve(name, tag)
        except RegistryError:
            return True
        return False

    async def _rewrite_vanished(
        self, name: str, digest: Digest, tags: tuple[str, ...], revision_present: bool, vanished: list[str]
    ) -> bool:
        """Write again the revision link and tags that are gone; whether anything was."""
        if revision_present and not vanished:
            return False
        if not revision_present:
            await self.backend.put_content(paths.manifest_revision_link(name, digest), str(digest).encode())
        # The revision deleted and written again: the list of its tags may have gone with it.
        marks = [] if revision_present else [t for t in tags if t not in vanished]
        await asyncio.gather(
            *(self.tags.write(name, tag, digest) for tag in vanished),
            *(self.backend.put_content(paths.revision_tag(name, digest, tag), b"") for tag in marks),
        )
        return True

    async def _unlinked(self, name: str, blobs: list[Digest], children: list[Digest]) -> list[Digest]:
        """Which of the blobs and child manifests the repository no longer links."""
        present = await asyncio.gather(
            *(self.blobs.is_linked(name, d) for d in blobs),
            *(self.backend.exists(paths.manifest_revision_link(name, d)) for d in children),
        )
        return [d for d, ok in zip([*blobs, *children], present, strict=True) if not ok]

    async def delete(self, name: str, reference: str) -> None:
        """By tag: untag. By digest: remove the revision and every tag pointing at it."""
        if not Digest.is_digest(reference):
            await self.tags.delete(name, validate_tag(reference))
            return
        digest = await self.resolve(name, reference)
        found = asyncio.gather(self.tags.tags_of(name, digest), self._subject_of(name, digest))
        if self.tags.policy.rules:  # a tag may refuse: nothing is announced before the policy said yes
            tags, subject = await found
            for tag in tags:
                self.tags.check_can_delete(name, tag)
            planned = await self.events.prepare(name, manifests=[str(digest)])
        else:  # announced by the manifest alone (the index re-reads the tags that point at it) meanwhile
            (tags, subject), planned = await asyncio.gather(found, self.events.prepare(name, manifests=[str(digest)]))
        with self.events.ending(planned):
            await asyncio.gather(*(self.tags.remove(name, tag, digest) for tag in tags))
            await self.backend.delete(paths.manifest_revision_dir(name, digest))
            self.blobs.forget(name, digest)
            # A push tagging it meanwhile (answered 201) keeps it: see `delete_if_untagged`.
            if await self.tags.tags_of(name, digest):
                await self.backend.put_content(paths.manifest_revision_link(name, digest), str(digest).encode())
            else:
                await self._removed(name, digest, subject)

    async def delete_if_untagged(self, name: str, digest: Digest, subject: Digest | None) -> bool:
        """Delete a manifest revision only if no tag names it at the moment of deleting (GC's untagged removal).

        A push tagging it meanwhile either wrote its tag before the second look below (which puts the revision
        back), or after it; then the push's own re-check after writing its tag finds the revision gone and
        writes it again (`_confirm`). Either way the tag a client was answered 201 for keeps its manifest."""
        link = paths.manifest_revision_link(name, digest)
        if not await self.backend.exists(link) or await self.tags.tags_of(name, digest):
            return False  # gone already (the repository deleted meanwhile), or tagged
        planned = await self.events.prepare(name, manifests=[str(digest)])
        with self.events.ending(planned):
            await self.backend.delete(paths.manifest_revision_dir(name, digest))
            self.blobs.forget(name, digest)
            if await self.tags.tags_of(name, digest):
                await self.backend.put_content(link, str(digest).encode())
                return False  # tagged meanwhile: as it was
            await self._removed(name, digest, subject)
        return True

    async def _subject_of(self, name: str, digest: Digest) -> Digest | None:
        try:
            stored = await self.load(name, digest)
        except PathNotFound:
            return None
        parsed = read_stored_manifest(stored.data, stored.media_type)
        return None if parsed is None or parsed.subject is None else parsed.subject.digest

    async def _removed(self, name: str, digest: Digest, subject: Digest | None) -> None:
        """The revision is gone: so is its entry among its subject's referrers."""
        self.blobs.forget(name, digest)
        if subject is not None:
            await self.referrers.remove(name, subject, digest)
        self.events.emit(Event(EventType.MANIFEST_DELETED, name, str(digest)))


def _is_foreign(descriptor: Descriptor) -> bool:
    return bool(descriptor.urls) and media_types.is_foreign_layer(descriptor.media_type)


def too_large(size: int, limit: int) -> RegistryError:
    return RegistryError(
        ErrorCode.MANIFEST_TOO_LARGE,
        detail={"size": size, "limit": limit},
        message=f"manifest is larger than the {limit}-byte limit",
    )
