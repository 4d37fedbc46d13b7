"""Fetching a blob from an upstream once, however many clients ask for it meanwhile.

A fill streams the upstream's bytes into an upload session of the store (which hashes them) and into a spool
that every client pulling the blob reads as it grows: the first client and the ones that join later are all served
at the upstream's pace from one upstream GET. The spool keeps the received buffers themselves while the process's
memory budget allows, else it is an unnamed file on disk (registry/proxy/spools.py); it goes with its last reader.
The blob becomes visible in storage only once the upload verifies against its digest; a mismatch, a short body or a
dropped connection leaves nothing cached, and the clients reading the spool see their stream cut (their own digest
check would refuse what they got). A fill belongs to no request: a client going away does not stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path

import httpx

from registry.client.bodies import blob_body
from registry.digests import Digest
from registry.proxy.spools import DiskSpool, Spool, SpoolMemory, memory_spool
from registry.proxy.upstreams import Upstream, UpstreamUnavailable
from registry.store.blobs import BlobInfo, BlobStore
from registry.store.registry import Registry

logger = logging.getLogger("moorage")
SPOOL_WRITE = 1024 * 1024
RATE_WINDOW = 30.0
RESUME_BACKOFF = 0.2
READ_SIZE = 1024 * 1024


class FillFailed(Exception):
    """The fill stopped before the blob was verified and stored."""


class Fill:
    def __init__(
        self, digest: Digest, spool_dir: Path | None, min_rate: int = 0, memory: SpoolMemory | None = None
    ) -> None:
        self.digest = digest
        self.min_rate = min_rate
        self.size: int | None = None
        self.written = 0
        self.error: BaseException | None = None
        self.finished = False
        self.links: set[str] = set()  # repositories to link the blob into once it is stored
        self._memory = memory
        # On disk until the upstream announces the size (and the memory budget has room for it): a spool directory
        # that cannot take one fails the fill before it starts. Closed by the last of the fill and its readers.
        self._spool_medium: Spool = DiskSpool(spool_dir)
        self._users = 1  # the fill itself, then each reader
        self._stored: BlobStore | None = None  # where readers find the blob once its memory spool is dropped
        self._changed = asyncio.Event()
        self.started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        """True once the upstream answered with the blob (`size` is set then, if it announced one); False: it has
        no such blob."""

    def _spool_in_memory(self) -> None:
        """Move the (still empty) spool into memory if the budget has room for the announced size: no reader has
        it yet (readers join once `started` is set)."""
        if self._memory is None or self.size is None or self.written:
            return
        spool = memory_spool(self._memory, self.size)
        if spool is not None:
            on_disk, self._spool_medium = self._spool_medium, spool
            with contextlib.suppress(OSError):
                on_disk.close()

    async def wait_finished(self) -> None:
        """Until the fill is over: stored, or failed (`error`)."""
        while not self.finished:
            await self._changed.wait()

    @property
    def spooled_in_memory(self) -> bool:
        return self._spool_medium.in_memory

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _release(self) -> None:
        self._users -= 1
        if self._users == 0:
            self._spool_medium.close()

    async def run(
        self, registry: Registry, upstream: Upstream, remote: str, name: str, count: Callable[[int], None]
    ) -> None:
        """Fetch, spool and store; `count` hears of every byte the upstream sends."""
        upload_id: str | None = None
        started = time.monotonic()
        try:
            async with upstream.open_blob(remote, self.digest) as response:
                if response is None:
                    self.started.set_result(False)
                    return
                length = response.headers.get("Content-Length", "")
                if not (
                    length.isascii() and length.isdigit()
                ):  # unbounded otherwise: a stream without end would fill the disk
                    raise UpstreamUnavailable(f"{upstream.name}: blob {remote}@{self.digest}: no Content-Length")
                self.size = int(length)
                self._spool_in_memory()
                status = await registry.uploads.start(name, self.digest.algorithm)
                upload_id = status.upload_id
                if not self.started.done():
                    self.started.set_result(True)
                body = self._resumed(upstream, remote, response)
                # Closed on the way out however append ends: its spool write in flight finishes before the file goes.
                async with contextlib.aclosing(self._spooled(body, count)) as spooled:
                    await registry.uploads.append(name, upload_id, spooled)
            if self.written != self.size:
                raise FillFailed(f"the upstream sent {self.written} of {self.size} bytes")
            received = time.monotonic()
            await registry.uploads.complete(name, upload_id, self.digest)
            upload_id = None
            took = time.monotonic() - started
            logger.info(
                "proxy: fetched %s (%d bytes) from %s in %.2fs (%.0f MB/s; stored %.2fs after its last byte; "
                "spooled %s)",
                self.digest,
                self.size,
                upstream.name,
                took,
                self.size / 1e6 / max(took, 1e-6),
                time.monotonic() - received,
                "in memory" if self._spool_medium.in_memory else "on disk",
            )
            if self._spool_medium.in_memory:
                # Stored: readers still under way take the rest from storage, and the memory goes back to the budget
                # now, not when the slowest client is done (one that stops reading would hold it as long as it stays).
                self._stored = registry.blobs
                self._spool_medium.close()
            for other in self.links - {name}:
                await registry.blobs.link(other, self.digest)
        except BaseException as e:
            self.error = e
            if not self.started.done():
                self.started.set_exception(e)
            if not isinstance(e, asyncio.CancelledError):
                logger.warning("proxy: fetching %s from %s failed: %s", self.digest, upstream.name, e)
            if upload_id is not None:
                with contextlib.suppress(Exception):
                    await registry.uploads.cancel(name, upload_id)
            if isinstance(e, asyncio.CancelledError):
                raise
        finally:
            self.finished = True
            self._notify()
            self._release()

    async def _resumed(self, upstream: Upstream, remote: str, first: httpx.Response) -> AsyncIterator[bytes]:
        """The blob's bytes from `first`; a connection that drops part-way is picked up where it stopped with a
        Range request (as many times as the upstream's `attempts` allow)."""
        received = 0
        retries = upstream.settings.attempts - 1
        response = first
        resumed: contextlib.AsyncExitStack | None = None  # the request that picked up, closed before the next one
        try:
            while True:
                try:
                    async for chunk in blob_body(response):
                        received += len(chunk)
                        yield chunk
                    return
                except httpx.TransportError as e:
                    if retries <= 0 or self.size is None or received >= self.size:
                        raise
                    retries -= 1
                    logger.info(
                        "proxy: %s dropped %s at %d bytes (%s): resuming", upstream.name, self.digest, received, e
                    )
                if resumed is not None:
                    await resumed.aclose()
                await asyncio.sleep(RESUME_BACKOFF)
                resumed = contextlib.AsyncExitStack()
                again = await resumed.enter_async_context(upstream.open_blob(remote, self.digest, received, self.size))
                if again is None:
                    raise FillFailed(f"{upstream.name} no longer has {self.digest}")
                response = again
        finally:
            if resumed is not None:
                await resumed.aclose()

    async def _spooled(self, chunks: AsyncIterator[bytes], count: Callable[[int], None]) -> AsyncGenerator[bytes, None]:
        """The upstream's bytes in buffers of SPOOL_WRITE, each written to the spool while the store takes it (and
        the next is received): one spool write at a time, so readers see the spool grow in order."""
        parts: list[bytes] = []  # joined once per buffer: growing a bytearray chunk by chunk copies it over and over
        buffered = 0
        offset = 0
        pending: asyncio.Future[None] | None = None
        window_start, window_bytes = time.monotonic(), 0
        try:
            async for chunk in chunks:
                parts.append(chunk)
                buffered += len(chunk)
                window_bytes += len(chunk)
                if self.size is not None and offset + buffered > self.size:
                    raise FillFailed(f"the upstream sent more than the {self.size} bytes it announced")
                if time.monotonic() - window_start >= RATE_WINDOW:  # a trickle holds every waiting client
                    if window_bytes < self.min_rate * RATE_WINDOW:
                        raise FillFailed(f"the upstream sent {window_bytes} bytes in {RATE_WINDOW:.0f}s: too slow")
                    window_start, window_bytes = time.monotonic(), 0
                if buffered < SPOOL_WRITE:
                    continue
                count(buffered)
                data = b"".join(parts)
                parts.clear()
                buffered = 0
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(self._spool(data, offset))
                offset += len(data)
                yield data
            if parts:
                count(buffered)
                data = b"".join(parts)
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(self._spool(data, offset))
                yield data
            if pending is not None:
                await pending
                pending = None
        finally:
            if pending is not None:  # the spool write in flight ends before the file may be closed
                with contextlib.suppress(BaseException):
                    await pending

    async def _spool(self, data: bytes, offset: int) -> None:
        await self._spool_medium.write(data, offset)
        self.written = offset + len(data)
        self._notify()

    def reader(self, offset: int, length: int | None) -> AsyncIterator[bytes]:
        """The bytes from `offset` as they arrive; raises FillFailed if the fill stops before they do."""
        self._users += 1  # taken now: the file stays open until this reader ends, even if never iterated
        return self._read(offset, length)

    async def _read(self, offset: int, length: int | None) -> AsyncIterator[bytes]:
        try:
            position = offset
            while True:
                end = self._end(offset, length)
                if end is not None and position >= end:
                    return
                changed = self._changed
                if self.written > position:
                    stop = self.written if end is None else min(self.written, end)
                    data = self._spool_medium.recent(position, stop)
                    if data is None and self._stored is not None:
                        async for chunk in self._stored.read(self.digest, position, stop - position):
                            yield chunk
                        return
                    size = len(data) if data is not None else min(READ_SIZE, stop - position)
                    if position + size == self.size and not self.finished:
                        # The blob's last bytes wait for its verification: a client never gets all of a blob
                        # that does not match its digest (the stream is cut short instead).
                        await changed.wait()
                        continue
                    if data is None:
                        data = await self._spool_medium.read(position, size)
                    if position + len(data) == self.size and self.error is not None:
                        raise FillFailed(f"fetching {self.digest} failed: {self.error}")
                    position += len(data)
                    yield data
                    continue
                if self.error is not None:
                    raise FillFailed(f"fetching {self.digest} stopped: {self.error}")
                if self.finished:
                    return
                await changed.wait()
        finally:
            self._release()

    def _end(self, offset: int, length: int | None) -> int | None:
        if self.size is None:
            return None if length is None else offset + length
        return self.size if length is None else min(self.size, offset + length)


class Fills:
    """The fills under way in this process: one per (upstream, digest), at most `limit` at once. A request joins a
    fill of its own upstream only, once that upstream said the request's repository has the blob (and the blob is
    linked into that repository once stored): a fill never answers for another upstream."""

    def __init__(self, spool_dir: Path | None, limit: int, min_rate: int, memory: SpoolMemory | None = None) -> None:
        self.spool_dir = spool_dir
        self.limit = limit
        self.min_rate = min_rate
        self.memory = memory
        self._fills: dict[tuple[str, Digest], Fill] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def under_way(self) -> list[Fill]:
        return list(self._fills.values())

    def spooled(self, digest: Digest, offset: int, length: int | None) -> AsyncIterator[bytes] | None:
        """The bytes of `digest` from a fill whose upstream answered with it (the caller's own `fetch` said one
        did); None when the fills of it have all ended (it is in storage then, or failed)."""
        for (_, fetched), fill in self._fills.items():
            if fetched == digest and fill.size is not None and fill.error is None:
                return fill.reader(offset, length)
        return None

    async def fetch(
        self,
        registry: Registry,
        upstream: Upstream,
        remote: str,
        name: str,
        digest: Digest,
        count: Callable[[int], None],
    ) -> BlobInfo | None:
        """Join the fill of `digest` from `upstream` or start one; its size once the upstream answered (None: it
        has no such blob). The caller asked the upstream already whether `remote` has it (a fill is shared by the
        repositories of one upstream: the blob is the same bytes, and each was confirmed on its own)."""
        key = (upstream.name, digest)
        fill = self._fills.get(key)
        if fill is None:
            if len(self._fills) >= self.limit:
                raise UpstreamUnavailable(f"{len(self._fills)} blobs are being fetched already", retry_after=10)
            try:
                fill = Fill(digest, self.spool_dir, self.min_rate, self.memory)
            except OSError as e:  # the spool directory is missing, full or not ours
                raise UpstreamUnavailable(f"cannot spool {digest}: {e}") from e
            self._fills[key] = fill
            task = asyncio.get_running_loop().create_task(
                self._run(key, fill, registry, upstream, remote, name, count), name=f"proxy fill {digest}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        fill.links.add(name)
        try:
            found = await asyncio.shield(fill.started)
        except UpstreamUnavailable:
            raise
        except Exception as e:
            raise UpstreamUnavailable(f"{upstream.name}: {e}") from e
        if not found or fill.size is None:
            return None
        return BlobInfo(digest, fill.size, spooled=True)

    async def stored(self, upstream: Upstream, digest: Digest) -> None:
        """Until the fill of `digest` from `upstream` under way (if any) is over."""
        fill = self._fills.get((upstream.name, digest))
        if fill is not None:
            await asyncio.shield(fill.wait_finished())

    async def _run(
        self,
        key: tuple[str, Digest],
        fill: Fill,
        registry: Registry,
        upstream: Upstream,
        remote: str,
        name: str,
        count: Callable[[int], None],
    ) -> None:
        try:
            await fill.run(registry, upstream, remote, name, count)
        finally:
            if self._fills.get(key) is fill:
                del self._fills[key]

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
