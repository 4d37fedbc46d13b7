"""A storage backend that times every call of the backend it wraps and counts its failures, by operation; and keeps
the store's availability (and free space, where there is such a thing) in gauges, probing every few seconds."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, BinaryIO, cast

from registry.metrics import Metrics
from storage_backends import FileInfo, PathNotFound, StorageBackend, StorageError, Writer

logger = logging.getLogger("moorage")
# Readiness probes also update the gauges (cached for a second); this is for when nobody polls them.
PROBE_INTERVAL = 5.0
PROBE_TIMEOUT = 2.0
OPERATIONS = (
    "get_content",
    "put_content",
    "reader",
    "open_file",
    "writer",
    "commit",
    "stat",
    "list",
    "walk",
    "copy",
    "move",
    "link",
    "delete",
    "delete_file",
    "touch",
    "redirect_url",
    "purge_abandoned_writes",
    "check",
)


class _Timer:
    """Observes one operation: its duration, and its failure unless the failure is only a missing path.

    A plain class with __enter__/__exit__, not @contextmanager: this runs on every storage call of the hot path.
    """

    __slots__ = ("duration", "errors")

    def __init__(self, duration: Any, errors: Any) -> None:
        self.duration = duration
        self.errors = errors

    def __call__(self) -> _Timing:
        return _Timing(self)


class _Timing:
    __slots__ = ("start", "timer")

    def __init__(self, timer: _Timer) -> None:
        self.timer = timer
        self.start = 0.0

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        self.timer.duration.observe(time.perf_counter() - self.start)
        if kind is not None and not issubclass(kind, PathNotFound):
            self.timer.errors.inc()


class InstrumentedWriter(Writer):
    def __init__(self, inner: Writer, commit_timer: _Timer) -> None:
        self._inner = inner
        self._commit_timer = commit_timer

    @property
    def size(self) -> int:
        return self._inner.size

    async def write(self, data: bytes) -> None:
        await self._inner.write(data)

    async def commit(self) -> bool:
        with self._commit_timer():
            return await self._inner.commit()

    async def cancel(self) -> None:
        await self._inner.cancel()


class InstrumentedBackend(StorageBackend):
    def __init__(self, inner: StorageBackend, metrics: Metrics) -> None:
        self.inner = inner
        self.name = inner.name
        self.links = inner.links
        self._timers = {
            op: _Timer(
                metrics.buffered_histogram(metrics.storage_duration.labels(inner.name, op)),
                metrics.storage_errors.labels(inner.name, op),
            )
            for op in OPERATIONS
        }
        self._up = metrics.storage_up.labels(inner.name)
        self._free_bytes = metrics.storage_free_bytes
        self._prober: asyncio.Task[None] | None = None

    @property
    def exclusive_writes(self) -> bool:
        return self.inner.exclusive_writes

    async def get_content(self, path: str) -> bytes:
        with self._timers["get_content"]():
            return await self.inner.get_content(path)

    async def put_content(self, path: str, data: bytes, exclusive: bool = False, durable: bool = True) -> bool:
        with self._timers["put_content"]():
            return await self.inner.put_content(path, data, exclusive, durable)

    async def reader(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        # Timed until the first chunk: the rest of a stream goes at the client's pace.
        stream = cast(AsyncGenerator[bytes, None], self.inner.reader(path, offset, length))
        async with contextlib.aclosing(stream) as chunks:
            with self._timers["reader"]():
                first = await anext(chunks, None)
            if first is None:
                return
            yield first
            async for chunk in chunks:
                yield chunk

    async def writer(self, path: str, exclusive: bool = False) -> Writer:
        with self._timers["writer"]():
            inner = await self.inner.writer(path, exclusive)
        return InstrumentedWriter(inner, self._timers["commit"])

    async def stat(self, path: str) -> FileInfo:
        with self._timers["stat"]():
            return await self.inner.stat(path)

    async def list(self, path: str) -> builtins.list[FileInfo]:
        with self._timers["list"]():
            return await self.inner.list(path)

    async def walk(self, path: str, start_after: str | None = None) -> AsyncIterator[FileInfo]:
        stream = cast(AsyncGenerator[FileInfo, None], self.inner.walk(path, start_after))
        async with contextlib.aclosing(stream) as entries:
            with self._timers["walk"]():
                first = await anext(entries, None)
            if first is None:
                return
            yield first
            async for entry in entries:
                yield entry

    async def copy(self, src: str, dst: str, exclusive: bool = False) -> bool:
        with self._timers["copy"]():
            return await self.inner.copy(src, dst, exclusive)

    async def move(self, src: str, dst: str, exclusive: bool = False) -> bool:
        with self._timers["move"]():
            return await self.inner.move(src, dst, exclusive)

    async def link(self, src: str, dst: str) -> bool:
        with self._timers["link"]():
            return await self.inner.link(src, dst)

    async def delete(self, path: str) -> None:
        with self._timers["delete"]():
            await self.inner.delete(path)

    async def delete_file(self, path: str) -> None:
        with self._timers["delete_file"]():
            await self.inner.delete_file(path)

    async def touch(self, path: str) -> None:
        with self._timers["touch"]():
            await self.inner.touch(path)

    async def redirect_url(self, path: str, method: str = "GET") -> str | None:
        with self._timers["redirect_url"]():
            return await self.inner.redirect_url(path, method)

    async def open_file(self, path: str) -> BinaryIO | None:
        with self._timers["open_file"]():
            return await self.inner.open_file(path)

    async def purge_abandoned_writes(self, older_than: float, dry_run: bool = False) -> int:
        with self._timers["purge_abandoned_writes"]():
            return await self.inner.purge_abandoned_writes(older_than, dry_run)

    async def check(self) -> None:
        """Probe the store, and set the availability and free-space gauges from what it says."""
        try:
            with self._timers["check"]():
                await self.inner.check()
                free = await self.inner.free_bytes()
        except Exception:  # not on cancellation: a shutdown says nothing of the store (a timeout is marked below)
            self._up.set(0)
            raise
        self._up.set(1)
        if free is not None:
            self._free_bytes.labels(self.name).set(free)

    async def free_bytes(self) -> int | None:
        return await self.inner.free_bytes()

    async def _probe_forever(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.check(), PROBE_TIMEOUT)
            except TimeoutError:
                self._up.set(0)  # a store that does not answer in time is down as far as clients can tell
                logger.debug("storage probe timed out")
            except (StorageError, OSError) as e:
                logger.debug("storage probe failed: %s", e)
            await asyncio.sleep(PROBE_INTERVAL)

    async def start(self) -> None:
        await self.inner.start()
        self._prober = asyncio.create_task(self._probe_forever(), name="storage-probe")

    async def aclose(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
            self._prober = None
        await self.inner.aclose()
