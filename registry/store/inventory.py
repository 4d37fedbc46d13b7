"""What storage holds, read in one pass: repositories (revisions, tags, layer links, upload sessions) and blobs.

One listing of `repositories/` and one of `blobs/` (paginated on S3, a directory walk on a filesystem) instead of
a call per repository; manifests are then read concurrently, each digest once, and what they reference is taken
leniently (a manifest stored once, perhaps by another registry, is never refused here).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

from registry import paths
from registry.digests import Digest
from registry.errors import RegistryError
from registry.store.manifest_format import References, references_of
from registry.store.registry import Registry
from registry.store.uploads import is_upload_id
from storage_backends import PathNotFound

READS_AT_ONCE = 16


@dataclass(slots=True)
class RepositoryContents:
    name: str
    revisions: dict[Digest, dt.datetime] = field(default_factory=dict)
    tag_links: dict[str, dt.datetime] = field(default_factory=dict)
    tags: dict[str, Digest] = field(default_factory=dict)
    layer_links: set[Digest] = field(default_factory=set)
    uploads: dict[str, dt.datetime] = field(default_factory=dict)

    @property
    def is_repository(self) -> bool:
        return bool(self.revisions or self.tag_links or self.layer_links)


@dataclass(slots=True)
class Inventory:
    repositories: dict[str, RepositoryContents] = field(default_factory=dict)
    blobs: dict[Digest, tuple[int, dt.datetime]] = field(default_factory=dict)
    quarantined: dict[Digest, tuple[int, dt.datetime]] = field(default_factory=dict)
    manifests: dict[Digest, References] = field(default_factory=dict)

    def repository(self, name: str) -> RepositoryContents:
        contents = self.repositories.get(name)
        if contents is None:
            contents = self.repositories[name] = RepositoryContents(name)
        return contents

    def referenced_by(self, name: str) -> set[Digest]:
        """What `name`'s manifest revisions reference: themselves, their configs and layers, their children."""
        found: set[Digest] = set()
        for digest in self.repositories[name].revisions:
            found.add(digest)
            references = self.manifests.get(digest)
            if references is not None:
                found.update(references.blobs)
                found.update(references.children)
        return found


def _digest(algorithm: str, hex_part: str) -> Digest | None:
    try:
        return Digest.parse(f"{algorithm}:{hex_part}")
    except RegistryError:
        return None


async def read_repositories(registry: Registry, inventory: Inventory, only: str | None = None) -> None:
    """Fill `inventory.repositories` from one walk of `repositories/` (or of one repository's areas)."""
    prefixes = paths.repository_areas(only) if only is not None else (paths.REPOSITORIES,)
    for prefix in prefixes:
        try:
            async for info in registry.backend.walk(prefix):
                _classify(inventory, info.path, info.modified, only)
        except PathNotFound:
            continue


async def read_uploads(registry: Registry, inventory: Inventory, name: str) -> None:
    """Add `name`'s upload sessions to `inventory` (one listing of its sessions)."""
    try:
        async for info in registry.backend.walk(paths.uploads_dir(name)):
            _classify(inventory, info.path, info.modified, name)
    except PathNotFound:
        pass


def _classify(inventory: Inventory, path: str, modified: dt.datetime, only: str | None) -> None:
    parsed = paths.parse_repository_path(path)
    if parsed is None:
        return
    name, area, rest = parsed
    if only is not None and name != only:
        return
    if area == "_manifests" and len(rest) == 4 and rest[0] == "revisions" and rest[3] == "link":
        digest = _digest(rest[1], rest[2])
        if digest is not None:
            inventory.repository(name).revisions[digest] = modified
    elif area == "_manifests" and len(rest) == 4 and rest[0] == "tags" and rest[2:] == ["current", "link"]:
        inventory.repository(name).tag_links[rest[1]] = modified
    elif area == "_layers" and len(rest) == 3 and rest[2] == "link":
        digest = _digest(rest[0], rest[1])
        if digest is not None:
            inventory.repository(name).layer_links.add(digest)
    elif area == "_uploads" and len(rest) >= 2 and is_upload_id(rest[0]):
        # A session's age is that of its last write (its start record, a chunk, a checkpoint): a long upload still
        # receiving chunks is not abandoned, and a session whose start record went (a cancel cut short) is found too.
        uploads = inventory.repository(name).uploads
        uploads[rest[0]] = max(uploads.get(rest[0], modified), modified)


async def read_blobs(registry: Registry, inventory: Inventory) -> None:
    for prefix, quarantine in ((paths.BLOBS, False), (paths.GC_QUARANTINE, True)):
        try:
            async for info in registry.backend.walk(prefix):
                parsed = paths.parse_quarantined_blob(info.path) if quarantine else paths.parse_blob_data(info.path)
                digest = _digest(*parsed) if parsed else None
                if digest is None:
                    continue
                if quarantine:
                    inventory.quarantined[digest] = (info.size, info.modified)
                else:
                    inventory.blobs[digest] = (info.size, info.modified)
        except PathNotFound:
            continue


async def read_tags(registry: Registry, inventory: Inventory) -> None:
    """Resolve every tag link found (concurrently); a tag whose link is unreadable is left out."""
    limit = asyncio.Semaphore(READS_AT_ONCE)

    async def resolve(contents: RepositoryContents, tag: str) -> None:
        async with limit:
            with contextlib.suppress(RegistryError):
                contents.tags[tag] = await registry.tags.resolve(contents.name, tag)

    await asyncio.gather(
        *(resolve(contents, tag) for contents in inventory.repositories.values() for tag in contents.tag_links)
    )


async def read_manifests(registry: Registry, inventory: Inventory, digests: Iterable[Digest]) -> None:
    """Load what each manifest references (each digest once; manifests never change under a digest)."""
    limit = asyncio.Semaphore(READS_AT_ONCE)
    wanted = [d for d in dict.fromkeys(digests) if d not in inventory.manifests]

    async def load(digest: Digest) -> None:
        async with limit:
            try:
                data = await registry.blobs.read_all(digest)
            except PathNotFound:
                inventory.manifests[digest] = References(readable=False)
                return
        inventory.manifests[digest] = references_of(data)

    await asyncio.gather(*(load(d) for d in wanted))
