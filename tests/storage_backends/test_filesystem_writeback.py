"""The filesystem writer hands large durable writes to the disk as they stream (sync_file_range every 16 MiB) and
flushes them on a thread every 64 MiB while the stream goes on, so that the fsync at commit has little left; where the
kernel refuses sync_file_range, writes go on without it. Durability is unchanged: commit still fsyncs everything
before the file is published, and a failed flush fails the write."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import threading
from pathlib import Path

import pytest

from storage_backends import StorageFull, filesystem
from storage_backends.filesystem import FilesystemBackend

MIB = 1024 * 1024


async def write(root: Path, chunks: int, *, fsync: bool = True) -> bytes:
    backend = FilesystemBackend(root, fsync=fsync)
    await backend.start()
    data = b"".join(bytes([i]) * MIB for i in range(chunks))
    writer = await backend.writer("blob")
    for i in range(chunks):
        await writer.write(data[i * MIB : (i + 1) * MIB])
    assert await writer.commit()
    stored = await backend.get_content("blob")
    await backend.aclose()
    assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()
    return stored


def leftover_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_libc_has_the_call_here() -> None:
    assert filesystem._sync_file_range is not None  # Linux: the optimisation is not silently off


async def test_windows_are_handed_over_and_flushed_as_they_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int, int]] = []
    flushes: list[int] = []
    real, real_fdatasync = filesystem._sync_file_range, os.fdatasync
    assert real is not None

    def recording(fd: int, offset: int, length: int, flags: int) -> None:
        calls.append((offset, length, flags))
        real(fd, offset, length, flags)

    def flushing(fd: int) -> None:
        flushes.append(os.fstat(fd).st_size)
        real_fdatasync(fd)

    monkeypatch.setattr(filesystem, "_sync_file_range", recording)
    monkeypatch.setattr(os, "fdatasync", flushing)
    step = 2 * MIB
    monkeypatch.setattr(filesystem, "WRITEBACK_STEP", step)
    monkeypatch.setattr(filesystem, "FLUSH_STEP", 2 * step)
    await write(tmp_path, 13)  # six whole windows, then a part of one that the commit's fsync flushes
    assert calls == [(window * step, step, filesystem._START_WRITE) for window in range(6)]
    # A flush every second window, each started once the file had at least that much in it.
    assert len(flushes) == 3
    assert all(size >= (i + 1) * 2 * step for i, size in enumerate(sorted(flushes)))
    calls.clear()
    flushes.clear()
    await write(tmp_path / "small", 1)  # under one window: nothing to hand over early
    await write(tmp_path / "no-fsync", 13, fsync=False)  # not durable: the page cache decides
    assert calls == []
    assert flushes == []


async def test_a_failed_flush_fails_the_write_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdatasync", full)
    monkeypatch.setattr(filesystem, "WRITEBACK_STEP", MIB)
    monkeypatch.setattr(filesystem, "FLUSH_STEP", 2 * MIB)
    backend = FilesystemBackend(tmp_path)
    await backend.start()
    writer = await backend.writer("blob")
    with pytest.raises(StorageFull):
        for i in range(8):
            await writer.write(bytes([i]) * MIB)
        await writer.commit()
    assert not await backend.exists("blob")
    await backend.aclose()
    assert leftover_files(tmp_path) == []


async def test_a_kernel_that_refuses_the_call_turns_it_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refusing(fd: int, offset: int, length: int, flags: int) -> None:
        raise OSError(errno.ENOSYS, "not implemented")

    monkeypatch.setattr(filesystem, "_sync_file_range", refusing)
    await write(tmp_path, 40)
    assert filesystem._sync_file_range is None


class BlockedFlush:
    """os.fdatasync that waits until released, then records what its descriptor names at that moment."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.seen: list[str] = []
        self.real = os.fdatasync

    def __call__(self, fd: int) -> None:
        self.started.set()
        self.release.wait(10)
        try:
            self.seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError as e:
            self.seen.append(f"error {e.errno}")
        self.real(fd)


@pytest.fixture
def blocked_flush(monkeypatch: pytest.MonkeyPatch) -> BlockedFlush:
    monkeypatch.setattr(filesystem, "WRITEBACK_STEP", MIB)
    monkeypatch.setattr(filesystem, "FLUSH_STEP", 2 * MIB)
    blocked = BlockedFlush()
    monkeypatch.setattr(os, "fdatasync", blocked)
    return blocked


async def writer_in_a_blocked_flush(
    root: Path, blocked_flush: BlockedFlush
) -> tuple[FilesystemBackend, filesystem.FilesystemWriter]:
    """A durable writer past its first flush step: its flush has started, and blocks until released."""
    backend = FilesystemBackend(root)
    await backend.start()
    writer = await backend.writer("blob")
    assert isinstance(writer, filesystem.FilesystemWriter)
    for _ in range(2):
        await writer.write(b"x" * MIB)
    await asyncio.to_thread(blocked_flush.started.wait, 10)
    return backend, writer


async def cancel_twice(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_write_cancelled_twice_does_not_close_the_file_under_its_flush(
    tmp_path: Path, blocked_flush: BlockedFlush
) -> None:
    backend, writer = await writer_in_a_blocked_flush(tmp_path, blocked_flush)
    task = asyncio.create_task(writer.write(b"y" * 2 * MIB))  # waits for that flush before the next
    await asyncio.sleep(0.2)
    asyncio.get_running_loop().call_later(0.3, blocked_flush.release.set)
    await cancel_twice(task)
    # The write gave up only once the flush's thread was done with the descriptor (before: at once, and the file
    # could be closed and its number reused under the flush).
    assert len(blocked_flush.seen) == 1
    assert blocked_flush.seen[0].startswith(str(tmp_path / ".moorage-tmp")), blocked_flush.seen  # the writer's file
    await writer.cancel()
    await backend.aclose()


async def test_a_cancel_cancelled_twice_still_closes_and_removes_the_file(
    tmp_path: Path, blocked_flush: BlockedFlush
) -> None:
    backend, writer = await writer_in_a_blocked_flush(tmp_path, blocked_flush)
    task = asyncio.create_task(writer.cancel())
    for _ in range(5):
        await asyncio.sleep(0)
    blocked_flush.release.set()
    await cancel_twice(task)
    await asyncio.sleep(0.2)
    await backend.aclose()
    assert writer._file.closed  # type: ignore[attr-defined]
    assert leftover_files(tmp_path) == []


async def test_a_write_in_flight_when_the_writer_is_cancelled_starts_no_flush(
    tmp_path: Path, blocked_flush: BlockedFlush, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write still handing a window to the disk when another task cancels the writer: cancel waits for that call,
    and the write starts no flush on the closed descriptor."""
    blocked_flush.release.set()
    gate = threading.Event()
    real = filesystem._sync_file_range
    assert real is not None

    def slow(fd: int, offset: int, length: int, flags: int) -> None:
        gate.wait(10)
        real(fd, offset, length, flags)

    backend = FilesystemBackend(tmp_path)
    await backend.start()
    writer = await backend.writer("blob")
    await writer.write(b"x" * MIB)
    monkeypatch.setattr(filesystem, "_sync_file_range", slow)
    task = asyncio.create_task(writer.write(b"y" * MIB))  # 2 MiB: in sync_file_range, then a flush would start
    await asyncio.sleep(0.2)
    cancelling = asyncio.create_task(writer.cancel())
    await asyncio.sleep(0.1)
    assert not cancelling.done()  # waits for the call on the descriptor
    gate.set()
    await cancelling
    await task
    await backend.aclose()
    assert blocked_flush.seen == []
    assert leftover_files(tmp_path) == []
