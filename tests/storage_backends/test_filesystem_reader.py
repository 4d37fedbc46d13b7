"""The filesystem backend's reader closes its file however it is left, and never under a read on a thread."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import pytest

from storage_backends import PathNotFound
from storage_backends.filesystem import FilesystemBackend

MiB = 1024 * 1024


def _open_descriptors_of(path: Path) -> int:
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                found += 1
        except OSError:
            continue
    return found


async def test_a_reader_cancelled_again_and_again_closes_its_file(tmp_path: Path) -> None:
    """What a blob download does when its client goes: Starlette cancels the response's task within an anyio cancel
    scope, which cancels it again at every await; a close sent to a thread behind busy ones was then never run, and
    the file was left to the garbage collector (CI: an unraisable ResourceWarning)."""
    backend = FilesystemBackend(tmp_path / "root", fsync=False)
    await backend.put_content("blobs/a", os.urandom(3 * MiB))
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=1)  # one thread, kept busy: what is sent to it waits
    loop.set_default_executor(executor)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader = backend.reader("blobs/a")
        assert len(await anext(reader)) == MiB
        gate = threading.Event()
        busy = loop.run_in_executor(None, gate.wait)
        loop.call_later(0.3, gate.set)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await anext(reader)
        assert scope.cancelled_caught
        await busy
        await asyncio.sleep(0.1)
        assert _open_descriptors_of(tmp_path / "root" / "blobs" / "a") == 0
        del reader
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    executor.shutdown()


async def test_ranges_and_a_missing_file(tmp_path: Path) -> None:
    backend = FilesystemBackend(tmp_path, fsync=False)
    data = os.urandom(2 * MiB + 5)
    await backend.put_content("blobs/b", data)
    assert b"".join([c async for c in backend.reader("blobs/b")]) == data
    assert b"".join([c async for c in backend.reader("blobs/b", MiB - 3, MiB + 6)]) == data[MiB - 3 : 2 * MiB + 3]
    assert b"".join([c async for c in backend.reader("blobs/b", 2 * MiB, 100)]) == data[2 * MiB :]
    assert b"".join([c async for c in backend.reader("blobs/b", 0, 0)]) == b""
    with pytest.raises(PathNotFound):
        async for _ in backend.reader("blobs/none"):
            pass
    assert _open_descriptors_of(tmp_path / "blobs" / "b") == 0
