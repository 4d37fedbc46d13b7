"""The pull-through cache: the store's `ReadThrough` (registry/store/read_through.py) over the configured upstreams.

- A repository under an upstream's prefix is a cache of the upstream's repository of the same name, the prefix
  taken off. The upstream with an empty prefix (docker's `registry-mirrors` mode) covers every name that is not a
  local repository: a name first pushed here stays local, one first fetched stays a cache (a record in storage
  says which, `paths.proxy_cached`).
- Manifests by digest are immutable: fetched once, served from the cache for ever. A tag is checked upstream with
  a HEAD once it is older than the upstream's `tag_ttl` here; when the upstream cannot answer, the cached tag is
  served, and the response says so (`Moorage-Cache: stale`).
- Blobs a cached repository does not link: the registry's own copy is linked when there is one (deduplicated with
  everything else in storage), else fetched once (registry/proxy/fills.py) while clients stream it.
- Concurrent requests for the same manifest share one upstream request; so do those for the same blob.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar, cast

from registry import media_types, paths
from registry.digests import Digest
from registry.errors import ErrorCode, RegistryError
from registry.names import TAG_RE
from registry.proxy.fills import Fills
from registry.proxy.settings import ProxySettings
from registry.proxy.upstreams import (
    RemoteManifest,
    Upstream,
    UpstreamDenied,
    UpstreamUnavailable,
    denied,
    unavailable,
)
from registry.store.blobs import BlobInfo, blob_unknown
from registry.store.events import Event, EventType
from registry.store.tags import manifest_unknown

if TYPE_CHECKING:
    from registry.metrics import Metrics
    from registry.store.registry import Registry

logger = logging.getLogger("moorage")
T = TypeVar("T")
ROUTE_MEMORY_SECONDS = 10.0
CHECKED_LIMIT = 65536
CACHE_STATUS_HEADER = "Moorage-Cache"

# What the cache did for the current request ("hit", "miss", "stale"), for the response header (registry/proxy/setup).
cache_status: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("moorage_cache_status", default=None)


def _say(status: str) -> None:
    said = cache_status.get()
    if said is not None:
        said.append(status)


class ProxyCache:
    def __init__(self, settings: ProxySettings, metrics: Metrics | None = None) -> None:
        self.upstreams = [Upstream(u) for u in settings.upstreams]
        self.prefixed = sorted((u for u in self.upstreams if u.prefix), key=lambda u: -len(u.prefix))
        self.mirror = next((u for u in self.upstreams if not u.prefix), None)
        self.metrics = metrics
        self.fills = Fills(settings.spool_dir)
        self._registry: Registry | None = None
        self._checked: dict[tuple[str, str], float] = {}  # (repository, tag) -> when it was last checked upstream
        self._flights: dict[tuple[str, ...], asyncio.Future[object]] = {}
        self._routes: dict[str, tuple[bool, float]] = {}  # mirror mode: name -> (cached, until)

    def bind(self, registry: Registry) -> None:
        self._registry = registry
        # A tag or repository removed here (GC, `moorage repo rm`, the admin API) is checked upstream at its next pull.
        registry.events.subscribe(self._forget, (EventType.TAG_DELETED, EventType.REPOSITORY_DELETED))

    def _forget(self, event: Event) -> None:
        if event.type is EventType.TAG_DELETED:
            self._checked.pop((event.repository, event.tag), None)
            return
        for key in [key for key in self._checked if key[0] == event.repository]:
            del self._checked[key]
        self._routes.pop(event.repository, None)

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            raise RuntimeError("the proxy cache is not bound to a store")
        return self._registry

    async def aclose(self) -> None:
        await self.fills.aclose()
        for upstream in self.upstreams:
            await upstream.aclose()

    # Which upstream a repository comes from.

    async def route(self, name: str) -> Upstream | None:
        for upstream in self.prefixed:
            if upstream.covers(name):
                return upstream
        if self.mirror is None:
            return None
        remembered = self._routes.get(name)
        if remembered is not None and remembered[1] > time.monotonic():
            return self.mirror if remembered[0] else None
        backend = self.registry.backend
        cached = await backend.exists(paths.proxy_cached(name))
        local = not cached and await self.registry.repositories.exists(name)
        if cached or local:  # an unknown name is not remembered: its first fetch or push decides
            self._routes[name] = (cached, time.monotonic() + ROUTE_MEMORY_SECONDS)
            if len(self._routes) > CHECKED_LIMIT:
                self._routes.pop(next(iter(self._routes)))
        return None if local else self.mirror

    async def refusal(self, name: str) -> RegistryError | None:
        """Why a client may not push to or delete from `name` (a cache of an upstream that takes no pushes). In
        mirror mode only names already cached are refused: a new name pushed becomes a local repository."""
        upstream = await self.route(name)
        if upstream is None or upstream.settings.allow_push:
            return None
        if upstream is self.mirror and not await self.registry.backend.exists(paths.proxy_cached(name)):
            return None
        return RegistryError(
            ErrorCode.UNSUPPORTED,
            message=f"{name} is a cache of the upstream registry {upstream.name}: it takes no pushes or deletes",
            detail={"name": name, "upstream": upstream.name},
            status=405,
        )

    # Manifests.

    async def manifest(self, name: str, reference: str) -> None:
        upstream = await self.route(name)
        if upstream is None:
            return
        if Digest.is_digest(reference):
            await self._manifest_by_digest(upstream, name, Digest.parse(reference))
        elif TAG_RE.match(reference):
            await self._tag(upstream, name, reference)

    async def _manifest_by_digest(self, upstream: Upstream, name: str, digest: Digest) -> None:
        if await self.registry.backend.exists(paths.manifest_revision_link(name, digest)):
            self._count(upstream, "hit")
            return
        remote = upstream.remote(name)
        try:
            limit = self.registry.manifests.max_bytes
            found = await self._once(
                ("manifest", name, str(digest)), lambda: upstream.manifest(remote, str(digest), limit)
            )
        except UpstreamDenied as e:
            self._count(upstream, "error")
            raise denied(manifest_unknown(name, str(digest)), e) from e
        except UpstreamUnavailable as e:
            self._count(upstream, "error")
            raise unavailable(e) from e
        if found is None:
            raise manifest_unknown(name, str(digest))
        await self._store(upstream, name, None, found)
        self._count(upstream, "miss")

    async def _tag(self, upstream: Upstream, name: str, tag: str) -> None:
        key = (name, tag)
        checked = self._checked.get(key)
        if checked is not None and time.monotonic() - checked < upstream.settings.tag_ttl:
            self._count(upstream, "hit")
            return
        try:
            await self._once(("tag", name, tag), lambda: self._check_tag(upstream, name, tag))
        except UpstreamUnavailable as e:
            if await self._local_tag(name, tag) is None:
                self._count(upstream, "error")
                if isinstance(e, UpstreamDenied):
                    raise denied(manifest_unknown(name, tag), e) from e
                raise unavailable(e) from e
            logger.warning("proxy: serving the cached %s:%s: %s", name, tag, e)
            self._count(upstream, "stale")

    async def _check_tag(self, upstream: Upstream, name: str, tag: str) -> None:
        remote = upstream.remote(name)
        current = await upstream.manifest_digest(remote, tag)
        if current is None:
            raise manifest_unknown(name, tag)
        if current == await self._local_tag(name, tag):
            self._count(upstream, "hit")
        else:
            found = await upstream.manifest(remote, str(current), self.registry.manifests.max_bytes)
            if found is None:  # deleted upstream between the two requests
                raise manifest_unknown(name, tag)
            await self._store(upstream, name, tag, found)
            self._count(upstream, "miss")
        self._checked[(name, tag)] = time.monotonic()
        while len(self._checked) > CHECKED_LIMIT:
            self._checked.pop(next(iter(self._checked)))

    async def _local_tag(self, name: str, tag: str) -> Digest | None:
        try:
            return await self.registry.tags.resolve(name, tag)
        except RegistryError:
            return None

    async def _store(self, upstream: Upstream, name: str, tag: str | None, manifest: RemoteManifest) -> None:
        registry = self.registry
        marker = paths.proxy_cached(name)
        if not await registry.backend.exists(marker):
            record = f"{upstream.name}\n{upstream.url}/{upstream.remote(name)}\n".encode()
            await registry.backend.put_content(marker, record)
            self._routes.pop(name, None)
        media_type = manifest.media_type or media_types.OCI_MANIFEST
        await registry.manifests.put(name, tag or str(manifest.digest), manifest.data, media_type, cached=True)

    # Blobs.

    async def blob(self, name: str, digest: Digest, *, fetch: bool) -> BlobInfo | None:
        upstream = await self.route(name)
        if upstream is None:
            return None
        registry = self.registry
        present = await registry.blobs.present(digest, touch=True)
        if present is not None:  # in storage already (another repository, an earlier fill): deduplicated
            await registry.blobs.link(name, digest)
            self._count(upstream, "hit")
            return present
        remote = upstream.remote(name)
        try:
            if not fetch:
                key = ("blob size", upstream.name, remote, str(digest))
                size = await self._once(key, lambda: upstream.blob_size(remote, digest))
                return None if size is None else BlobInfo(digest, size)
            info = await self.fills.fetch(registry, upstream, remote, name, digest, self._counter(upstream))
        except UpstreamDenied as e:
            self._count(upstream, "error")
            raise denied(blob_unknown(digest), e) from e
        except UpstreamUnavailable as e:
            self._count(upstream, "error")
            raise unavailable(e) from e
        if info is not None:
            self._count(upstream, "miss")
        return info

    def spooled(self, digest: Digest, offset: int, length: int | None) -> AsyncIterator[bytes] | None:
        return self.fills.spooled(digest, offset, length)

    # Shared pieces.

    async def _once(self, key: tuple[str, ...], call: Callable[[], Awaitable[T]]) -> T:
        """One upstream request for concurrent callers asking the same thing."""
        flight = self._flights.get(key)
        if flight is None:
            task: asyncio.Future[object] = asyncio.ensure_future(call())
            self._flights[key] = flight = task
            task.add_done_callback(lambda _: self._flights.pop(key, None))
        return cast(T, await asyncio.shield(flight))

    def _count(self, upstream: Upstream, outcome: str) -> None:
        _say(outcome)
        if self.metrics is not None:
            self.metrics.proxy_request(upstream.name, outcome)

    def _counter(self, upstream: Upstream) -> Callable[[int], None]:
        metrics = self.metrics
        if metrics is None:
            return lambda _: None
        return lambda size: metrics.proxy_upstream_bytes(upstream.name, size)
