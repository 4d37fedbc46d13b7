"""Repositories: which exist (found by walking `repositories/`, Distribution's way), and deleting one."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from registry import paths
from registry.errors import ErrorCode, RegistryError
from registry.names import validate_name
from registry.store.blobs import BlobStore
from registry.store.events import Event, EventBus, EventType
from registry.store.tags import TagStore, tag_immutable
from registry.store.uploads import UploadStore
from storage_backends import PathNotFound, StorageBackend

SESSIONS_AT_ONCE = 32  # start records deleted at once when a repository goes


@dataclass(frozen=True, slots=True)
class DeletedRepository:
    name: str
    tags: int
    manifests: int

    def as_dict(self) -> dict[str, str | int]:
        return {"name": self.name, "tags": self.tags, "manifests": self.manifests}


class RepositoryStore:
    def __init__(
        self, backend: StorageBackend, tags: TagStore, blobs: BlobStore, uploads: UploadStore, events: EventBus
    ) -> None:
        self.backend = backend
        self.tags = tags
        self.blobs = blobs
        self.uploads = uploads
        self.events = events

    async def exists(self, name: str) -> bool:
        for marker in paths.repository_marker_dirs():
            if await self.backend.exists(f"{paths.repository(name)}/{marker}"):
                return True
        return False

    async def names(self, *, with_uploads: bool = False) -> list[str]:
        """Every repository's name. `with_uploads`: also the names that hold upload sessions alone (a first push
        abandoned before any blob completed, a session started while its repository was deleted), which are no
        repository for the catalog but hold bytes for GC's upload sweep."""
        found: list[str] = []
        markers = paths.repository_marker_dirs()
        if with_uploads:
            markers = (*markers, paths.uploads_dir_name())
        await self._collect(paths.REPOSITORIES, found, markers)
        return sorted(found)

    async def _collect(self, directory: str, found: list[str], markers: tuple[str, ...]) -> None:
        try:
            entries = await self.backend.list(directory)
        except PathNotFound:
            return
        bases = {entry.path.rsplit("/", 1)[1]: entry.path for entry in entries if entry.is_dir}
        if directory != paths.REPOSITORIES and any(marker in bases for marker in markers):
            found.append(paths.repository_name_of(directory))
        for base, child in bases.items():
            if base.startswith("_"):
                continue
            await self._collect(child, found, markers)

    async def delete(self, name: str, *, force: bool = False) -> DeletedRepository:
        """The repository's manifests, tags, links and uploads go now; its unique blobs at the next GC.
        NAME_UNKNOWN when there is no such repository; DENIED when it holds an immutable tag (unless `force`).
        Repositories nested under the name (`name/sub`) are not touched."""
        validate_name(name)
        if not await self.exists(name):
            raise RegistryError(ErrorCode.NAME_UNKNOWN, detail={"name": name})
        tags = await self.tags.all(name)
        if not force:
            for tag in tags:
                rule = self.tags.protecting_rule(name, tag)
                if rule is not None:
                    raise tag_immutable(name, tag, rule, "deleted (so neither can its repository)")
        revisions = await self._revision_count(name)
        planned = await self.events.prepare(name, whole=True)
        with self.events.ending(planned):
            await self._remove(name)
            self.blobs.forget_repository(name)
            self.tags.forget_repository(name)
            self.events.emit(Event(EventType.REPOSITORY_DELETED, name))
        return DeletedRepository(name, len(tags), revisions)

    async def _revision_count(self, name: str) -> int:
        count = 0
        try:
            algorithms = await self.backend.list(paths.manifest_revisions_dir(name))
        except PathNotFound:
            return 0
        for algorithm in algorithms:
            if algorithm.is_dir:
                try:
                    count += sum(1 for entry in await self.backend.list(algorithm.path) if entry.is_dir)
                except PathNotFound:
                    continue
        return count

    async def _end_upload_sessions(self, name: str) -> None:
        """End the sessions the repository has now, one by one, each start record before the rest of its session;
        the upload area is never deleted as a whole. A deletion of many keys need not be atomic (S3 deletes a prefix
        in batches, in key order: chunks before the start record), and a completing request reads a start record
        that is still there as "the session was not deleted under me" (UploadStore._publish_linked): a session
        started after the listing, its chunk deleted a batch before its start record, would take a PATCH's other
        bytes under the freed chunk name while it still looked alive. A session started after the listing is left
        whole: its push is one that came after the deletion."""
        try:
            sessions = [entry for entry in await self.backend.list(paths.uploads_dir(name)) if entry.is_dir]
        except PathNotFound:
            return
        for start in range(0, len(sessions), SESSIONS_AT_ONCE):
            await asyncio.gather(
                *(
                    self.uploads.cancel(name, session.path.rsplit("/", 1)[1])
                    for session in sessions[start : start + SESSIONS_AT_ONCE]
                )
            )

    async def _remove(self, name: str) -> None:
        """Tags, then blob links, then manifests, then upload sessions; then tags and manifests once more.

        A manifest PUT racing the deletion re-checks its blob links after writing its revision and tags (see
        ManifestStore.put). If that re-check comes after the links went, the PUT fails and takes back what it wrote;
        if it came before, its writes came before the second pass, which removes them. Either way no tag or manifest
        is left whose layers are gone: the push fails, or it happened before the deletion."""
        backend = self.backend
        await backend.delete(paths.tags_dir(name))
        await self._end_upload_sessions(name)
        for area in paths.repository_areas(name):
            if area != paths.uploads_dir(name):  # ended session by session above
                await backend.delete(area)
        await backend.delete(paths.tags_dir(name))
        await backend.delete(paths.manifest_revisions_dir(name))
