"""Blobs: one global content-addressed copy of every blob, made visible to a repository by a link."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

from registry import paths
from registry.digests import Digest
from registry.errors import ErrorCode, RegistryError
from registry.store.admission import Admissions
from registry.store.events import Event, EventBus, EventType
from registry.store.quarantine import DEFAULT_TOUCH_AFTER, Quarantine
from registry.store.read_through import ReadThrough
from storage_backends import FileInfo, PathNotFound, StorageBackend

T = TypeVar("T")
EXISTENCE_TTL = 1.0
EXISTENCE_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: Digest
    size: int
    spooled: bool = False
    """Being fetched from an upstream: its bytes come from the fill (`read`), not yet from storage."""


def blob_unknown(digest: Digest) -> RegistryError:
    return RegistryError(ErrorCode.BLOB_UNKNOWN, detail={"digest": str(digest)})


class BlobStore:
    """Blobs as repositories see them. Three ways to ask whether a blob exists, each with its own meaning:
    `is_linked` (the repository links it), `stat` (the repository can serve it: linked, data in place) and `present`
    (the registry holds its data). The last two bring back a blob GC set aside and, with `touch`, refresh an old
    blob's age (registry/store/quarantine.py says why)."""

    def __init__(
        self,
        backend: StorageBackend,
        events: EventBus,
        existence_ttl: float = EXISTENCE_TTL,
        touch_after: float = DEFAULT_TOUCH_AFTER,
        read_through: ReadThrough | None = None,
        admissions: Admissions | None = None,
    ) -> None:
        self.backend = backend
        self.events = events
        self.admissions = admissions if admissions is not None else Admissions()
        self.read_through = read_through
        self.quarantine = Quarantine(backend, touch_after)
        self._existence_ttl = existence_ttl
        # (repository, digest) -> (info, monotonic expiry, wall-clock time of the data's last modification):
        # positive answers only, for blob GET/HEAD.
        self._seen: OrderedDict[tuple[str, Digest], tuple[BlobInfo, float, float]] = OrderedDict()

    async def is_linked(self, name: str, digest: Digest) -> bool:
        """Whether `name` links the blob (its data may be anywhere: in place, set aside, or gone). Distribution lets
        a repository see a blob through a layer link or a manifest revision link."""
        for link in (paths.layer_link(name, digest), paths.manifest_revision_link(name, digest)):
            try:
                target = await self.backend.get_content(link)
            except PathNotFound:
                continue
            if target.decode("ascii", "replace").strip() == str(digest):
                return True
        return False

    async def stat(self, name: str, digest: Digest, *, touch: bool = False, remembered: bool = False) -> BlobInfo:
        """The blob as `name` sees it; BLOB_UNKNOWN when not linked there or when its data is gone.

        With `touch`, the caller is about to rely on the blob staying (a client's HEAD, a mount, a manifest PUT):
        an old blob's age is refreshed so that GC's grace period covers the push that follows.

        With `remembered` (blob GET/HEAD), the answer may come from a short-lived memory of blobs seen present
        (Distribution keeps a blob descriptor cache too): a link removed by another process may still answer for
        EXISTENCE_TTL seconds; one removed here is forgotten at once. A remembered answer serves a `touch` only
        while the blob is younger than the touch threshold. Manifest checks and mounts always ask storage."""
        key = (name, digest)
        now = time.monotonic()
        if remembered:
            seen = self._seen.get(key)
            stale_for_touch = touch and seen is not None and time.time() - seen[2] > self.quarantine.touch_after
            if seen is not None and seen[1] > now and not stale_for_touch:
                return seen[0]
        linked, data = await asyncio.gather(self.is_linked(name, digest), self._data(digest))  # one round trip
        if not linked:
            raise blob_unknown(digest)
        if data is None and await self.quarantine.restore(digest):
            data = await self._data(digest)
        if data is None:
            raise blob_unknown(digest)
        modified = data.modified.timestamp()
        if touch:
            refreshed = await self.quarantine.refresh(digest, data)
            if refreshed is None:
                raise blob_unknown(digest)
            modified = refreshed
        info = BlobInfo(digest, data.size)
        if remembered:
            self._seen[key] = (info, now + self._existence_ttl, modified)
            self._seen.move_to_end(key)
            while len(self._seen) > EXISTENCE_CACHE_SIZE:
                self._seen.popitem(last=False)
        return info

    async def present(self, digest: Digest, *, touch: bool = False) -> BlobInfo | None:
        """The registry's copy of the blob, whichever repositories link it (brought back if GC set it aside), or
        None when there is none."""
        data = await self._data(digest)
        if data is None:
            if not await self.quarantine.restore(digest):
                return None
            data = await self._data(digest)
            if data is None:
                return None
        elif touch and await self.quarantine.refresh(digest, data) is None:
            return None
        return BlobInfo(digest, data.size)

    async def _data(self, digest: Digest) -> FileInfo | None:
        try:
            return await self.backend.stat(paths.blob_data(digest))
        except PathNotFound:
            return None

    def forget_digest(self, digest: Digest) -> None:
        """Drop every remembered answer about `digest` (GC took the blob out)."""
        for key in [key for key in self._seen if key[1] == digest]:
            del self._seen[key]

    def forget_repository(self, name: str) -> None:
        for key in [key for key in self._seen if key[0] == name]:
            del self._seen[key]

    def forget(self, name: str, digest: Digest) -> None:
        self._seen.pop((name, digest), None)

    async def read(
        self, digest: Digest, offset: int = 0, length: int | None = None, *, spooled: bool = False
    ) -> AsyncIterator[bytes]:
        """The blob's bytes; `spooled` (the BlobInfo of `pull` said so): as they arrive from the upstream fill under
        way. A blob GC set aside since a remembered `stat` answer is brought back first."""
        if (
            spooled
            and self.read_through is not None
            and (arriving := self.read_through.spooled(digest, offset, length))
        ):
            async for chunk in arriving:
                yield chunk
            return
        path = paths.blob_data(digest)
        stream = self.backend.reader(path, offset, length)
        try:
            first = await anext(stream, None)
        except PathNotFound:
            if not await self.quarantine.restore(digest):
                raise
            stream = self.backend.reader(path, offset, length)
            first = await anext(stream, None)
        if first is None:
            return
        yield first
        async for chunk in stream:
            yield chunk

    async def open_file(self, digest: Digest) -> BinaryIO | None:
        """The blob's data as an open file, where the backend keeps files (see StorageBackend.open_file); None
        elsewhere. Never for a blob still arriving from an upstream (`spooled`): that one is `read`."""
        return await self._restoring(digest, self.backend.open_file)

    async def read_all(self, digest: Digest) -> bytes:
        return await self._restoring(digest, self.backend.get_content)

    async def _restoring(self, digest: Digest, fetch: Callable[[str], Awaitable[T]]) -> T:
        """`fetch` of the blob's data path; a blob GC set aside since a remembered `stat` answer is brought back
        first."""
        path = paths.blob_data(digest)
        try:
            return await fetch(path)
        except PathNotFound:
            if not await self.quarantine.restore(digest):
                raise
        return await fetch(path)

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
        await self.drop_link(name, digest)

    async def drop_link(self, name: str, digest: Digest) -> None:
        """Remove the layer link, whether or not it is there (GC drops links whose data is gone)."""
        await self.backend.delete(paths.layer_link_dir(name, digest))
        self.forget(name, digest)
        self.events.emit(Event(EventType.BLOB_DELETED, name, str(digest)))

    async def pull(self, name: str, digest: Digest, *, from_storage: bool = False) -> BlobInfo:
        """`stat` for a client about to take the bytes (a GET): counted as a pull. From memory when it remembers
        the blob, unless `from_storage` (a redirect sends the client to the bucket itself: the data must be in
        place there, and a blob GC set aside is brought back)."""
        info = await self._through(name, digest, fetch=True, remembered=not from_storage)
        if self.events.wants(EventType.BLOB_PULLED):
            self.events.emit(Event(EventType.BLOB_PULLED, name, str(digest), size=info.size))
        return info

    async def head(self, name: str, digest: Digest) -> BlobInfo:
        """`stat` for a client's HEAD: from memory, touching (a manifest PUT that relies on the blob often follows);
        a blob of a proxied repository not yet cached is described by its upstream."""
        return await self._through(name, digest, fetch=False, touch=True, remembered=True)

    async def _through(
        self, name: str, digest: Digest, *, fetch: bool, touch: bool = False, remembered: bool = False
    ) -> BlobInfo:
        try:
            return await self.stat(name, digest, touch=touch, remembered=remembered)
        except RegistryError as e:
            if self.read_through is None or e.code is not ErrorCode.BLOB_UNKNOWN:
                raise
            info = await self.read_through.blob(name, digest, fetch=fetch)
            if info is None:
                raise
            return info

    async def mount(self, name: str, source: str, digest: Digest) -> BlobInfo | None:
        """Link a blob that `source` can see into `name`, or None when `source` cannot see it."""
        try:
            info = await self.stat(source, digest, touch=True)
        except RegistryError:
            return None
        await self._admitted_link(name, digest, info.size)
        self.events.emit(Event(EventType.BLOB_MOUNTED, name, str(digest), size=info.size, source=source))
        return info

    async def mount_any(self, name: str, digest: Digest) -> BlobInfo | None:
        """Link the registry's copy of a blob into `name`, or None when there is none. Only for callers who may
        pull every repository (a registry without auth): it reveals that some repository has the blob."""
        info = await self.present(digest, touch=True)
        if info is None:
            return None
        await self._admitted_link(name, digest, info.size)
        self.events.emit(Event(EventType.BLOB_MOUNTED, name, str(digest), size=info.size))
        return info

    async def _admitted_link(self, name: str, digest: Digest, size: int) -> None:
        if not self.admissions:
            await self.link(name, digest)
            return
        admitted = await self.admissions.admit(name, digest, size)
        try:
            await self.link(name, digest)
        except BaseException:
            await admitted.release()
            raise

    async def put_small(self, digest: Digest, data: bytes) -> None:
        """Store small content (a manifest) whose digest the caller has computed from `data`. A copy GC set aside
        meanwhile is a duplicate once this one is written (GC drops it)."""
        if await self.backend.put_content(paths.blob_data(digest), data, exclusive=True):
            return
        await self.present(digest, touch=True)
