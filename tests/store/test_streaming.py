"""copy_stream: buffers are hashed and written in order while the next ones are received, at most PIPELINE_DEPTH of
them in flight; a failed write stops the writes after it and raises; a source failing mid-way returns only once
what is in flight has ended (the caller cancels the writer next), and so does a cancelled one."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import AsyncIterator

import pytest

from registry.store import streaming
from registry.store.streaming import PIPELINE_DEPTH, WRITE_BUFFER, copy_stream
from storage_backends import Writer


class SlowWriter(Writer):
    """Records what it is given; each write takes `delay` and the `fail_at`-th raises."""

    def __init__(self, delay: float = 0.0, fail_at: int | None = None) -> None:
        self.delay = delay
        self.fail_at = fail_at
        self.writes: list[bytes] = []
        self.active = 0
        self.most_active = 0

    @property
    def size(self) -> int:
        return sum(len(w) for w in self.writes)

    async def write(self, data: bytes) -> None:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            await asyncio.sleep(self.delay)
            if self.fail_at is not None and len(self.writes) == self.fail_at:
                raise OSError("disk full")
            self.writes.append(data)
        finally:
            self.active -= 1

    async def commit(self) -> bool:
        return True

    async def cancel(self) -> None:
        pass


async def pieces(
    data: bytes, sizes: list[int], received: list[int], fail_after: int | None = None
) -> AsyncIterator[bytes]:
    position = 0
    for size in sizes:
        if fail_after is not None and position >= fail_after:
            raise ConnectionResetError("the client went away")
        yield data[position : position + size]
        position += size
        received.append(position)
        await asyncio.sleep(0)


def split(total: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    sizes = []
    while sum(sizes) < total:
        sizes.append(min(rng.choice([1, 17, 65_536, 300_000, WRITE_BUFFER + 3]), total - sum(sizes)))
    return sizes


async def test_bytes_and_hash_are_in_order_whatever_the_chunking() -> None:
    data = random.Random(7).randbytes(9 * WRITE_BUFFER + 12_345)
    for seed in range(3):
        writer = SlowWriter(delay=0.001)
        hasher = hashlib.sha256()
        total = await copy_stream(pieces(data, split(len(data), seed), []), writer, hasher)
        assert total == len(data)
        assert b"".join(writer.writes) == data
        assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
        assert writer.most_active == 1  # one write at a time: a file is written front to back


async def test_receiving_runs_ahead_of_a_slow_disk_by_at_most_the_pipeline_depth() -> None:
    data = bytes(20 * WRITE_BUFFER)
    writer = SlowWriter(delay=0.02)
    received: list[int] = []
    ahead = 0

    async def watch() -> None:
        nonlocal ahead
        while True:
            ahead = max(ahead, len(received) - len(writer.writes))
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())
    try:
        await copy_stream(pieces(data, [WRITE_BUFFER] * 20, received), writer, hashlib.sha256())
    finally:
        watcher.cancel()
    assert b"".join(writer.writes) == data
    # Received, not yet written: the buffers in flight, plus the one being received.
    assert PIPELINE_DEPTH <= ahead <= PIPELINE_DEPTH + 1, ahead


async def test_a_failed_write_raises_and_nothing_is_written_after_it() -> None:
    data = bytes(10 * WRITE_BUFFER)
    writer = SlowWriter(delay=0.005, fail_at=3)
    with pytest.raises(OSError, match="disk full"):
        await copy_stream(pieces(data, [WRITE_BUFFER] * 10, []), writer, hashlib.sha256())
    assert len(writer.writes) == 3
    await asyncio.sleep(0.05)
    assert len(writer.writes) == 3 and writer.active == 0


async def test_a_source_failing_mid_way_returns_once_the_writes_in_flight_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(streaming, "PIPELINE_DEPTH", 4)
    data = bytes(10 * WRITE_BUFFER)
    writer = SlowWriter(delay=0.02)
    with pytest.raises(ConnectionResetError):
        await copy_stream(pieces(data, [WRITE_BUFFER] * 10, [], fail_after=6 * WRITE_BUFFER), writer, None)
    assert writer.active == 0
    assert b"".join(writer.writes) == data[: 6 * WRITE_BUFFER]  # everything received was written, in order


class ThreadWriter(SlowWriter):
    """Writes on a thread, as the filesystem's writer does: cancelling the awaiting task does not stop one."""

    def _write(self, data: bytes) -> None:
        self.active += 1
        try:
            time.sleep(self.delay)
            self.writes.append(data)
        finally:
            self.active -= 1

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self._write, data)


async def test_a_cancelled_copy_returns_only_once_the_writes_in_flight_ended() -> None:
    """A client that goes away cancels the request: the writer is cancelled next, never under a write."""
    data = bytes(10 * WRITE_BUFFER)
    writer = ThreadWriter(delay=0.05)
    copy = asyncio.create_task(copy_stream(pieces(data, [WRITE_BUFFER] * 10, []), writer, hashlib.sha256()))
    await asyncio.sleep(0.08)
    assert writer.active == 1
    copy.cancel()
    with pytest.raises(asyncio.CancelledError):
        await copy
    assert writer.active == 0
    assert data.startswith(b"".join(writer.writes))
