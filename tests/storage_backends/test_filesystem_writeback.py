"""The filesystem writer hands large durable writes to the disk as they stream (sync_file_range every 16 MiB, waiting
for the window WRITEBACK_LAG steps back), so that the fsync at commit has little left; where the kernel refuses the
call, writes go on without it. Durability is unchanged: commit still fsyncs everything before the file is published."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import pytest

from storage_backends import filesystem
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


def test_libc_has_the_call_here() -> None:
    assert filesystem._sync_file_range is not None  # Linux: the optimisation is not silently off


@pytest.mark.parametrize("lag", [1, 4])
async def test_windows_are_started_then_waited_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lag: int) -> None:
    calls: list[tuple[int, int, int]] = []
    real = filesystem._sync_file_range
    assert real is not None

    def recording(fd: int, offset: int, length: int, flags: int) -> None:
        calls.append((offset, length, flags))
        real(fd, offset, length, flags)

    monkeypatch.setattr(filesystem, "_sync_file_range", recording)
    step = 2 * MIB
    monkeypatch.setattr(filesystem, "WRITEBACK_STEP", step)
    monkeypatch.setattr(filesystem, "WRITEBACK_LAG", lag)
    await write(tmp_path, 13)  # six whole windows, then a part of one that the commit's fsync flushes
    start, wait = filesystem._START_WRITE, filesystem._WAIT_WRITTEN
    expected: list[tuple[int, int, int]] = []
    for window in range(6):
        expected.append((window * step, step, start))
        if window >= lag:  # at most `lag` windows in the disk's hands: the oldest is waited for
            expected.append(((window - lag) * step, step, wait))
    assert calls == expected
    calls.clear()
    await write(tmp_path / "small", 1)  # under one window: nothing to hand over early
    await write(tmp_path / "no-fsync", 13, fsync=False)  # not durable: the page cache decides
    assert calls == []


async def test_a_kernel_that_refuses_the_call_turns_it_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refusing(fd: int, offset: int, length: int, flags: int) -> None:
        raise OSError(errno.ENOSYS, "not implemented")

    monkeypatch.setattr(filesystem, "_sync_file_range", refusing)
    await write(tmp_path, 40)
    assert filesystem._sync_file_range is None
