"""Moving bytes from a stream into storage while hashing them, without holding a blob in memory."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterable, Awaitable, Callable

from registry.digests import Hasher
from storage_backends import Writer

WRITE_BUFFER = 1024 * 1024
# Buffers received but not yet hashed and written, per stream: receiving goes on while the disk or the hash thread
# catches up with a hiccup (a writeback wait, a thread not scheduled at once), instead of stalling the socket.
PIPELINE_DEPTH = 4
# Below this a thread hop costs more than hashing on the event loop.
INLINE_HASH_LIMIT = 64 * 1024


async def hash_into(hasher: Hasher, data: bytes) -> None:
    if len(data) <= INLINE_HASH_LIMIT:
        hasher.update(data)
    else:
        # hashlib releases the GIL for large updates: hash on a thread while the loop serves others.
        await asyncio.to_thread(hasher.update, data)


async def _after(previous: asyncio.Future[None] | None, step: Callable[[], Awaitable[None]]) -> None:
    """`step` once `previous` (the same stage's last buffer) is done; not at all if it failed."""
    if previous is not None:
        await previous
    await step()


class _Pipeline:
    """Two stages in order, hashing and writing, each taking the buffers one after another on its own thread, the
    two stages side by side; at most PIPELINE_DEPTH buffers in flight."""

    def __init__(self, writer: Writer, hasher: Hasher | None) -> None:
        self.writer = writer
        self.hasher = hasher
        self._hashed: asyncio.Future[None] | None = None
        self._written: asyncio.Future[None] | None = None
        self._in_flight: collections.deque[asyncio.Future[None]] = collections.deque()

    async def put(self, data: bytes) -> None:
        while len(self._in_flight) >= PIPELINE_DEPTH:
            await self._oldest()
        hasher = self.hasher
        if hasher is not None:
            self._hashed = asyncio.ensure_future(_after(self._hashed, lambda: hash_into(hasher, data)))
        self._written = asyncio.ensure_future(_after(self._written, lambda: self.writer.write(data)))
        both = self._written if self._hashed is None else asyncio.ensure_future(_all(self._hashed, self._written))
        self._in_flight.append(both)

    async def finish(self) -> None:
        """Wait for every buffer; the first failure raises."""
        while self._in_flight:
            await self._oldest()

    async def _oldest(self) -> None:
        # Shielded: a cancelled caller leaves the buffer's write running (a thread cannot be stopped part-way), and
        # `settle` waits for it before the caller cancels the writer.
        await asyncio.shield(self._in_flight[0])
        self._in_flight.popleft()

    async def settle(self) -> None:
        """Let what is in flight end, failed or not (the source failed: the caller cancels the writer next)."""
        pending = [f for f in (self._hashed, self._written, *self._in_flight) if f is not None]
        if pending:
            await asyncio.wait(pending)
        for future in pending:  # retrieved: a failure after the source's own is not logged as never retrieved
            if not future.cancelled():
                future.exception()


async def _all(*futures: asyncio.Future[None]) -> None:
    for future in futures:
        await future


async def copy_stream(source: AsyncIterable[bytes], writer: Writer, hasher: Hasher | None) -> int:
    """Write every chunk of `source` to `writer` (and `hasher`), in buffers of about WRITE_BUFFER bytes.

    Buffers are hashed and written (on threads) while the next ones are received: the server reads a request body
    only as fast as the app consumes it, so waiting for each write would stall the socket.
    """
    parts: list[bytes] = []
    buffered = 0
    total = 0
    pipeline = _Pipeline(writer, hasher)
    finished = False
    try:
        async for chunk in source:
            if not chunk:
                continue
            total += len(chunk)
            parts.append(chunk)
            buffered += len(chunk)
            if buffered >= WRITE_BUFFER:
                data = b"".join(parts)
                parts.clear()
                buffered = 0
                await pipeline.put(data)
        if parts:
            await pipeline.put(b"".join(parts))
        await pipeline.finish()
        finished = True
    finally:
        if not finished:
            # The source or a write failed mid-way: what is in flight ends before the caller cancels the writer.
            await pipeline.settle()
    return total
