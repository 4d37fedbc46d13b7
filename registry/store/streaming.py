"""Moving bytes from a stream into storage while hashing them, without holding a blob in memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable

from registry.digests import Hasher
from storage_backends import Writer

WRITE_BUFFER = 1024 * 1024
# Below this a thread hop costs more than hashing on the event loop.
INLINE_HASH_LIMIT = 64 * 1024


async def hash_into(hasher: Hasher, data: bytes) -> None:
    if len(data) <= INLINE_HASH_LIMIT:
        hasher.update(data)
    else:
        # hashlib releases the GIL for large updates: hash on a thread while the loop serves others.
        await asyncio.to_thread(hasher.update, data)


async def _flush(writer: Writer, hasher: Hasher | None, data: bytes) -> None:
    if hasher is None:
        await writer.write(data)
    elif len(data) <= INLINE_HASH_LIMIT:
        hasher.update(data)
        await writer.write(data)
    else:
        await asyncio.gather(asyncio.to_thread(hasher.update, data), writer.write(data))


async def copy_stream(source: AsyncIterable[bytes], writer: Writer, hasher: Hasher | None) -> int:
    """Write every chunk of `source` to `writer` (and `hasher`), in buffers of about WRITE_BUFFER bytes.

    One buffer is hashed and written (on threads) while the next is received: the server reads a request
    body only as fast as the app consumes it, so waiting for each write would stall the socket.
    """
    parts: list[bytes] = []
    buffered = 0
    total = 0
    pending: asyncio.Future[None] | None = None
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
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(_flush(writer, hasher, data))
        if pending is not None:
            await pending
            pending = None
        if parts:
            await _flush(writer, hasher, b"".join(parts))
    finally:
        if pending is not None and not pending.done():
            # The source failed mid-way: let the write in flight finish before the caller cancels the writer.
            await asyncio.wait([pending])
    return total
