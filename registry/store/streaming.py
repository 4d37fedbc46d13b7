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
    """Write every chunk of `source` to `writer` (and `hasher`), in buffers of about WRITE_BUFFER bytes."""
    buffer = bytearray()
    total = 0
    async for chunk in source:
        if not chunk:
            continue
        total += len(chunk)
        if not buffer and len(chunk) >= WRITE_BUFFER:
            await _flush(writer, hasher, bytes(chunk))
            continue
        buffer += chunk
        if len(buffer) >= WRITE_BUFFER:
            await _flush(writer, hasher, bytes(buffer))
            buffer.clear()
    if buffer:
        await _flush(writer, hasher, bytes(buffer))
    return total
