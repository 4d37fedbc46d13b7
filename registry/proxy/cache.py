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
import contextlib
import contextvars
import dataclasses
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar, cast

from registry import paths
from registry.digests import Digest
from registry.errors import ErrorCode, RegistryError
from registry.names import TAG_RE
from registry.proxy.fills import Fills
from registry.proxy.settings import ProxySettings
from registry.proxy.spools import SpoolMemory, default_budget
from registry.proxy.upstreams import (
    RangeIgnored,
    Upstream,
    UpstreamDenied,
    UpstreamUnavailable,
    denied,
    unavailable,
)
from registry.store.blobs import BlobInfo, blob_unknown
from registry.store.events import Event, EventType, acting_as, current_origin
from registry.store.manifest_format import parse_manifest
from registry.store.tags import manifest_unknown
from storage_backends import PathNotFound, StorageError

if TYPE_CHECKING:
    from registry.metrics import Metrics
    from registry.store.registry import Registry

logger = logging.getLogger("moorage")
T = TypeVar("T")
ROUTE_MEMORY_SECONDS = 10.0
ABSENT_SECONDS = 10.0
USED_MIN_SECONDS = 1.0
CHECKED_LIMIT = 65536
CACHE_STATUS_HEADER = "Moorage-Cache"
CONFIG_FIRST_MAX_BYTES = 4 * 1024 * 1024  # a config larger than this comes with the client's request only
PROOF_MIN_BYTES = 4 * 1024 * 1024  # a blob stored already and smaller than this comes whole again, not proven
SAMPLES = 4  # an upstream shows this many pieces of a blob stored already before it is linked for one of its names
SAMPLE_BYTES = 256  # each this long
SAMPLE_UNRANGED_MAX = 1024 * 1024  # from an upstream ignoring Range, a sample this far in is read off the body

# What the cache did for the current request ("hit", "miss", "stale"), for the response header (registry/proxy/setup).
cache_status: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("moorage_cache_status", default=None)


def _filling(upstream: Upstream) -> contextlib.AbstractContextManager[None]:
    """What a cache fill writes is pushed by `moorage:proxy:<upstream>` (its events say so, for webhooks and logs),
    on behalf of the request that asked for it (its address, host and request id stay)."""
    return acting_as(dataclasses.replace(current_origin(), actor=f"moorage:proxy:{upstream.name}"))


def _say(status: str) -> None:
    said = cache_status.get()
    if said is not None:
        said.append(status)


def sample_offsets(size: int, length: int, count: int) -> list[int]:
    """`count` offsets (fewer when two coincide) of `length`-byte samples of a `size`-byte blob, unforeseeable.
    Drawn past both ends and clipped, so that every byte, the first and last included, is as likely to be sampled."""
    return sorted(
        {min(max(secrets.randbelow(size + length - 1) - (length - 1), 0), size - length) for _ in range(count)}
    )


class ProxyCache:
    def __init__(self, settings: ProxySettings, metrics: Metrics | None = None, workers: int = 1) -> None:
        self.upstreams = [Upstream(u) for u in settings.upstreams]
        self.prefixed = sorted((u for u in self.upstreams if u.prefix), key=lambda u: -len(u.prefix))
        self.mirror = next((u for u in self.upstreams if not u.prefix), None)
        self.metrics = metrics
        memory = settings.spool_memory if settings.spool_memory is not None else default_budget(workers)
        self.fills = Fills(settings.spool_dir, settings.max_fills, settings.min_rate, SpoolMemory(memory))
        self._registry: Registry | None = None
        self._checked: dict[tuple[str, str], float] = {}  # (repository, tag) -> when it was last checked upstream
        self._flights: dict[tuple[str, ...], asyncio.Future[object]] = {}
        # What the upstream said it has not (blob sizes of None, manifests unknown), until when.
        self._absent: dict[tuple[str, ...], tuple[float, RegistryError | UpstreamDenied | None]] = {}
        self._routes: dict[str, tuple[bool, float]] = {}  # mirror mode: name -> (cached, until)
        # (upstream, digest) whose sample did not match: fetched whole from then on (no second draw of samples)
        self._unproven: dict[tuple[str, Digest], None] = {}
        self._used_at: dict[str, float] = {}  # when this process last recorded a use of a cached repository

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

    async def manifest(self, name: str, reference: str) -> Digest | None:
        upstream = await self.route(name)
        if upstream is None:
            return None
        if Digest.is_digest(reference):
            digest = Digest.parse(reference)
            outcome = await self._manifest_by_digest(upstream, name, digest)
        elif TAG_RE.match(reference):
            outcome, digest = await self._tag(upstream, name, reference)
        else:
            return None
        self._count(upstream, outcome)
        await self._used(upstream, name)
        return digest

    async def _used(self, upstream: Upstream, name: str) -> None:
        """Say in storage that `name` is pulled (for GC's eviction, registry/gc/eviction.py): at most once per
        twentieth of `evict_after` (and per second) in this process, so that a busy repository costs one small write
        now and then, and its record is never older than that while it is pulled."""
        after = upstream.settings.evict_after
        if after is None:
            return
        now = time.monotonic()
        every = max(USED_MIN_SECONDS, after / 20)
        if now - self._used_at.get(name, -math.inf) < every:
            return
        self._used_at[name] = now
        while len(self._used_at) > CHECKED_LIMIT:
            self._used_at.pop(next(iter(self._used_at)))
        try:
            await self.registry.backend.put_content(paths.proxy_used(name), b"", durable=False)
        except (StorageError, OSError) as e:  # the pull goes on; eviction sees the previous record
            logger.warning("proxy: could not record the use of %s: %s", name, e)

    async def _manifest_by_digest(self, upstream: Upstream, name: str, digest: Digest) -> str:
        if await self.registry.backend.exists(paths.manifest_revision_link(name, digest)):
            return "hit"
        key = ("manifest", upstream.name, name, str(digest))
        try:
            await self._once(key, lambda: self._fetch_manifest(upstream, name, str(digest), None))
        except UpstreamUnavailable as e:
            self._count(upstream, "error")
            raise self._refusal(e, manifest_unknown(name, str(digest))) from e
        return "miss"

    async def _tag(self, upstream: Upstream, name: str, tag: str) -> tuple[str, Digest]:
        """What the cache did ("hit", "miss", "stale") and the digest `name:tag` names in the store now."""
        checked = self._checked.get((name, tag))
        fresh = checked is not None and time.monotonic() - checked < upstream.settings.tag_ttl
        # Checked moments ago, and still here (GC on another replica may have removed it since): the one read of the
        # tag this pull makes (the store takes the digest from here).
        if fresh and (local := await self._local_tag(name, tag)) is not None:
            return "hit", local
        try:
            return await self._once(("tag", upstream.name, name, tag), lambda: self._check_tag(upstream, name, tag))
        except UpstreamUnavailable as e:
            local = await self._local_tag(name, tag)
            if local is None:
                self._count(upstream, "error")
                raise self._refusal(e, manifest_unknown(name, tag)) from e
            logger.warning("proxy: serving the cached %s:%s: %s", name, tag, e)
            return "stale", local

    async def _check_tag(self, upstream: Upstream, name: str, tag: str) -> tuple[str, Digest]:
        """Bring `name:tag` in line with the upstream: "hit" when it already was, "miss" when it was fetched."""
        current = await upstream.manifest_digest(upstream.remote(name), tag)
        if current is None:
            raise manifest_unknown(name, tag)
        outcome = "hit"
        if current != await self._local_tag(name, tag):
            await self._fetch_manifest(upstream, name, str(current), tag)
            outcome = "miss"
        self._checked[(name, tag)] = time.monotonic()
        while len(self._checked) > CHECKED_LIMIT:
            self._checked.pop(next(iter(self._checked)))
        return outcome, current

    async def _fetch_manifest(self, upstream: Upstream, name: str, digest: str, tag: str | None) -> None:
        """Fetch a manifest by digest and store it (tagged `tag`) through the store, like a push."""
        registry = self.registry
        found = await upstream.manifest(upstream.remote(name), digest, registry.manifests.max_bytes)
        if found is None:  # by digest: unknown there; by tag: deleted upstream between the HEAD and this GET
            raise manifest_unknown(name, tag or digest)
        if not await self._mark_cached(upstream, name):  # pushed here meanwhile: local now
            raise manifest_unknown(name, tag or digest)
        await self._config_first(upstream, name, found.data)
        try:
            with _filling(upstream):
                await registry.manifests.put(name, tag or digest, found.data, "", cached=True)
        except RegistryError as e:
            if e.code is ErrorCode.UNAVAILABLE:  # storage, not the content
                raise
            # The upstream's content is what is wrong (a schema this registry does not store, invalid JSON): to the
            # client pulling it, the cache cannot serve it.
            logger.warning("proxy: %s sent %s@%s, which cannot be stored: %s", upstream.name, name, digest, e)
            raise UpstreamUnavailable(f"{upstream.name}: its manifest {digest} cannot be stored ({e.code.name})") from e

    async def _config_first(self, upstream: Upstream, name: str, data: bytes) -> None:
        """An image's config comes into the repository before its manifest (the client asks for it next anyway),
        so that what reads a cached manifest's config (the metadata index, the UI) reads one the repository holds,
        never one of another repository whose digest the upstream's manifest named. What fails here is left to
        the client's own request for the config."""
        try:
            config = parse_manifest(data, "").config
        except RegistryError:
            return  # the store refuses it next, and says why
        if config is None or config.size > CONFIG_FIRST_MAX_BYTES:
            return
        try:
            info = await self.blob(name, config.digest, fetch=True)
            if info is not None and info.spooled:
                await self.fills.stored(upstream, config.digest)
        except (RegistryError, StorageError) as e:
            logger.info("proxy: the config %s of a manifest of %s did not come first: %s", config.digest, name, e)

    async def _mark_cached(self, upstream: Upstream, name: str) -> bool:
        """Record that `name` is a cache of `upstream`, before anything of it is stored (in mirror mode, a name with
        content and no record is a local repository); False when, in mirror mode, a push made it one meanwhile."""
        marker = paths.proxy_cached(name)
        backend = self.registry.backend
        if await backend.exists(marker):
            return True
        if upstream is self.mirror and await self.registry.repositories.exists(name):
            return False
        record = f"{upstream.name}\n{upstream.url}/{upstream.remote(name)}\n".encode()
        await backend.put_content(marker, record)
        self._routes.pop(name, None)
        return True

    async def _local_tag(self, name: str, tag: str) -> Digest | None:
        try:
            return await self.registry.tags.resolve(name, tag)
        except RegistryError:
            return None

    # Blobs.

    async def blob(self, name: str, digest: Digest, *, fetch: bool) -> BlobInfo | None:
        """The upstream is asked first, always: a copy in storage (any repository's) is linked into `name` only once
        the upstream said `name` has that blob, so a cached name never reveals another repository's content."""
        upstream = await self.route(name)
        if upstream is None:
            return None
        registry = self.registry
        remote = upstream.remote(name)
        try:
            key = ("blob size", upstream.name, remote, str(digest))
            size = await self._once(key, lambda: upstream.blob_size(remote, digest))
            if size is None:
                return None
            if not fetch:  # a HEAD: described by the upstream, nothing linked or fetched (nor said of storage)
                self._count(upstream, "miss")
                return BlobInfo(digest, size)
            if not await self._mark_cached(upstream, name):
                return None
            present = await registry.blobs.present(digest, touch=True)
            if present is not None:  # stored already (an earlier fill, another repository): deduplicated
                proven = await self._proven(upstream, remote, digest, present.size, size)
                if proven is False:
                    return None
                if proven:
                    await registry.blobs.link(name, digest)
                    self._count(upstream, "hit")
                    return present
                # Not provable with a sample: the upstream sends it whole, checked against its digest as any fill.
            with _filling(upstream):  # the fill's task takes this context: its blob.pushed names the cache
                info = await self.fills.fetch(registry, upstream, remote, name, digest, self._counter(upstream))
        except UpstreamUnavailable as e:
            self._count(upstream, "error")
            raise self._refusal(e, blob_unknown(digest)) from e
        if info is not None:
            self._count(upstream, "miss")
        return info

    async def _proven(self, upstream: Upstream, remote: str, digest: Digest, stored: int, claimed: int) -> bool | None:
        """The upstream holds the bytes of the copy in storage, not only its digest: SAMPLES samples of them, each
        SAMPLE_BYTES at an offset it cannot foresee (every byte of the blob as likely to be in one), must match.
        Else an upstream that answers 200 for any digest (hostile, or compromised) would have the cache link, and
        serve, another repository's private blob whose digest it learned. A blob under PROOF_MIN_BYTES is fetched
        whole instead (about as cheap, and a sample of a small blob says little). An upstream that knows a part of a
        blob passes only if every sample falls in that part, and has one draw: once sampling has begun, anything but
        a match (a mismatch, an error, a refusal, a missing range) has that upstream send the blob whole, checked
        against its digest as any fill, for as long as this process runs.

        False: the upstream has no such blob after all. None: it is fetched whole instead."""
        if stored != claimed:
            raise UpstreamUnavailable(
                f"{upstream.name}: blob {remote}@{digest} is {claimed} bytes there, {stored} here"
            )
        if stored < PROOF_MIN_BYTES or (upstream.name, digest) in self._unproven:
            return None
        length = SAMPLE_BYTES
        offsets = sample_offsets(stored, length, SAMPLES)
        proven = False
        try:
            try:
                async with asyncio.TaskGroup() as group:  # one failing cancels the others: none left running
                    asked = [
                        group.create_task(upstream.blob_sample(remote, digest, offset, length, SAMPLE_UNRANGED_MAX))
                        for offset in offsets
                    ]
            except ExceptionGroup as failed:
                if failed.subgroup(RangeIgnored) is not None:
                    return None
                raise failed.exceptions[0] from None
            samples = [task.result() for task in asked]
            if any(sample is None for sample in samples):  # a HEAD that said yes, a GET that says no
                return False
            for offset, sample in zip(offsets, samples, strict=True):
                try:
                    local = b"".join([chunk async for chunk in self.registry.blobs.read(digest, offset, length)])
                except PathNotFound:  # collected since it was found: fetched whole, as if it never was
                    return None
                if sample != local:
                    raise UpstreamUnavailable(f"{upstream.name}: blob {remote}@{digest}: its bytes are not the blob's")
            proven = True
            return True
        finally:
            if not proven:
                self._unproven[(upstream.name, digest)] = None
                while len(self._unproven) > CHECKED_LIMIT:
                    self._unproven.pop(next(iter(self._unproven)))

    @staticmethod
    def _refusal(error: UpstreamUnavailable, unknown: RegistryError) -> RegistryError:
        logger.warning("proxy: %s", error)
        return denied(unknown, error) if isinstance(error, UpstreamDenied) else unavailable(error)

    def spooled(self, digest: Digest, offset: int, length: int | None) -> AsyncIterator[bytes] | None:
        return self.fills.spooled(digest, offset, length)

    async def origins(self, names: Sequence[str]) -> dict[str, str]:
        try:
            return await self._origins(names)
        except (StorageError, OSError):  # a listing says what it can: the prefixes, and the index the rest
            return {name: u.name for name in names for u in self.prefixed if u.covers(name)}

    async def is_cache(self, name: str) -> bool:
        return bool(await self._origins([name]))

    async def _origins(self, names: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        unprefixed: list[str] = []
        for name in names:
            upstream = next((u for u in self.prefixed if u.covers(name)), None)
            if upstream is not None:
                found[name] = upstream.name
            elif self.mirror is not None:
                unprefixed.append(name)
        if self.mirror is not None and unprefixed:
            exists = self.registry.backend.exists
            marked = await asyncio.gather(*(exists(paths.proxy_cached(name)) for name in unprefixed))
            found.update({name: self.mirror.name for name, cached in zip(unprefixed, marked, strict=True) if cached})
        return found

    # Shared pieces.

    async def _once(self, key: tuple[str, ...], call: Callable[[], Awaitable[T]]) -> T:
        """One upstream request for concurrent callers asking the same thing; "no such thing upstream" (a blob size
        of None, MANIFEST_UNKNOWN, a refusal) stands for ABSENT_SECONDS, so that clients asking for what does not
        exist cost the upstream (and a Docker Hub pull quota) one request, not one each."""
        absent = self._absent.get(key)
        if absent is not None:
            until, unknown = absent
            if until > time.monotonic():
                if isinstance(unknown, UpstreamDenied):
                    raise UpstreamDenied(str(unknown))
                if unknown is not None:
                    raise RegistryError(unknown.code, unknown.detail, message=unknown.message)
                return cast(T, None)
            del self._absent[key]
        flight = self._flights.get(key)
        if flight is None:
            task: asyncio.Future[object] = asyncio.ensure_future(call())
            self._flights[key] = flight = task
            task.add_done_callback(lambda done: self._landed(key, done))
        return cast(T, await asyncio.shield(flight))

    def _landed(self, key: tuple[str, ...], flight: asyncio.Future[object]) -> None:
        self._flights.pop(key, None)
        if flight.cancelled():
            return
        error = flight.exception()
        if error is None and key[0] == "blob size" and flight.result() is None:
            self._absent[key] = (time.monotonic() + ABSENT_SECONDS, None)
        elif (isinstance(error, RegistryError) and error.code is ErrorCode.MANIFEST_UNKNOWN) or isinstance(
            error, UpstreamDenied
        ):
            self._absent[key] = (time.monotonic() + ABSENT_SECONDS, error)
        while len(self._absent) > CHECKED_LIMIT:
            self._absent.pop(next(iter(self._absent)))

    def _count(self, upstream: Upstream, outcome: str) -> None:
        _say(outcome)
        if self.metrics is not None:
            self.metrics.proxy_request(upstream.name, outcome)

    def _counter(self, upstream: Upstream) -> Callable[[int], None]:
        metrics = self.metrics
        if metrics is None:
            return lambda _: None
        received = metrics.proxy_upstream_received_bytes.labels(upstream.name)
        return received.inc
