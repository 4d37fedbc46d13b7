"""An in-memory backend: the test double for fast tests of the registry's semantics (as httpx's MockTransport and
Distribution's `inmemory` driver are). It passes the conformance suite the real backends pass, keys and prefixes
behaving as on S3 (an object and objects below its name may coexist); nothing survives the process.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from storage_backends.base import (
    DEFAULT_CHUNK_SIZE,
    FileInfo,
    PathNotFound,
    StorageBackend,
    StorageError,
    Writer,
    check_path,
)


@dataclass(slots=True)
class _Object:
    data: bytes
    modified: dt.datetime


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class MemoryBackend(StorageBackend):
    name = "memory"
    links = True

    def __init__(self) -> None:
        self._objects: dict[str, _Object] = {}
        self._keys: list[str] = []  # sorted: prefix queries are a bisect away
        self._writers: dict[int, MemoryWriter] = {}  # open (neither committed nor cancelled) writers

    # Internal bookkeeping; no await between a check and its write, so each operation is atomic on the loop.

    def _store(self, path: str, data: bytes) -> None:
        if path not in self._objects:
            bisect.insort(self._keys, path)
        self._objects[path] = _Object(data, _now())

    def _remove(self, path: str) -> None:
        if self._objects.pop(path, None) is not None:
            del self._keys[bisect.bisect_left(self._keys, path)]

    def _under(self, prefix: str) -> list[str]:
        """Every key strictly below `prefix/`, in order."""
        start = bisect.bisect_left(self._keys, prefix + "/")
        end = bisect.bisect_left(self._keys, prefix + "0")  # "0" follows "/" in ASCII
        return self._keys[start:end]

    def _object(self, path: str) -> _Object:
        found = self._objects.get(check_path(path))
        if found is None:
            raise PathNotFound(path)
        return found

    def writer_done(self, writer: MemoryWriter) -> None:
        self._writers.pop(id(writer), None)

    def open_writes(self) -> list[str]:
        """Keys of writes neither committed nor cancelled (the conformance suite's leftovers)."""
        return sorted(writer.path for writer in self._writers.values())

    def backdate(self, path: str, seconds: float) -> None:
        found = self._object(path)
        found.modified = found.modified - dt.timedelta(seconds=seconds)

    # StorageBackend.

    async def get_content(self, path: str) -> bytes:
        return self._object(path).data

    async def put_content(self, path: str, data: bytes, exclusive: bool = False, durable: bool = True) -> bool:
        check_path(path)
        if exclusive and path in self._objects:
            return False
        self._store(path, bytes(data))
        return True

    async def reader(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        data = self._object(path).data
        end = len(data) if length is None else min(len(data), offset + length)
        for start in range(offset, end, DEFAULT_CHUNK_SIZE):
            yield data[start : min(start + DEFAULT_CHUNK_SIZE, end)]
            await asyncio.sleep(0)

    async def writer(self, path: str, exclusive: bool = False) -> Writer:
        writer = MemoryWriter(self, check_path(path), exclusive)
        self._writers[id(writer)] = writer
        return writer

    async def stat(self, path: str) -> FileInfo:
        check_path(path)
        found = self._objects.get(path)
        if found is not None:
            return FileInfo(path, len(found.data), found.modified)
        below = self._under(path)
        if not below:
            raise PathNotFound(path)
        return FileInfo(path, 0, max(self._objects[key].modified for key in below), is_dir=True)

    async def list(self, path: str) -> list[FileInfo]:
        check_path(path)
        children: dict[str, FileInfo] = {}
        for key in self._under(path):
            name, _, rest = key[len(path) + 1 :].partition("/")
            child = f"{path}/{name}"
            if rest:
                children.setdefault(child, FileInfo(child, 0, self._objects[key].modified, is_dir=True))
            else:  # an object and keys below its name may coexist, as on S3: the object is what is listed
                found = self._objects[key]
                children[child] = FileInfo(child, len(found.data), found.modified)
        if not children:
            raise PathNotFound(path)
        return sorted(children.values(), key=lambda info: info.path)

    async def walk(self, path: str, start_after: str | None = None) -> AsyncIterator[FileInfo]:
        check_path(path)
        for key in self._under(path):
            if start_after is not None and key <= start_after:
                continue
            found = self._objects.get(key)
            if found is not None:  # deleted while the walk was paused at a yield
                yield FileInfo(key, len(found.data), found.modified)

    async def copy(self, src: str, dst: str, exclusive: bool = False) -> bool:
        check_path(dst)
        source = self._object(src)
        if exclusive and dst in self._objects:
            return False
        self._store(dst, source.data)
        return True

    async def move(self, src: str, dst: str, exclusive: bool = False) -> bool:
        check_path(dst)
        source = self._object(src)
        if exclusive and dst in self._objects:
            return False
        self._store(dst, source.data)
        self._remove(src)
        return True

    async def link(self, src: str, dst: str) -> bool:
        check_path(dst)
        source = self._object(src)
        if dst in self._objects:
            return False
        self._store(dst, source.data)  # bytes never change in place: the same content is the same object here
        return True

    async def delete(self, path: str) -> None:
        check_path(path)
        self._remove(path)
        for key in self._under(path):
            self._remove(key)

    async def delete_file(self, path: str) -> None:
        check_path(path)
        self._remove(path)

    async def touch(self, path: str) -> None:
        self._object(path).modified = _now()

    async def purge_abandoned_writes(self, older_than: float, dry_run: bool = False) -> int:
        now = time.monotonic()
        old = [writer for writer in self._writers.values() if now - writer.started > older_than]
        if not dry_run:
            for writer in old:
                writer.abandon()
        return len(old)


class MemoryWriter(Writer):
    def __init__(self, backend: MemoryBackend, path: str, exclusive: bool) -> None:
        self.backend = backend
        self.path = path
        self.exclusive = exclusive
        self.started = time.monotonic()
        self._parts: list[bytes] = []
        self._size = 0
        self._done = False

    @property
    def size(self) -> int:
        return self._size

    def _check_open(self) -> None:
        if self._done:
            raise StorageError(f"writer for {self.path} is already committed or cancelled")

    async def write(self, data: bytes) -> None:
        self._check_open()
        self._parts.append(bytes(data))
        self._size += len(data)
        await asyncio.sleep(0)

    async def commit(self) -> bool:
        self._check_open()
        self._done = True
        self.backend.writer_done(self)
        data, self._parts = b"".join(self._parts), []
        return await self.backend.put_content(self.path, data, exclusive=self.exclusive)

    async def cancel(self) -> None:
        self.abandon()

    def abandon(self) -> None:
        self._done = True
        self._parts = []
        self.backend.writer_done(self)
