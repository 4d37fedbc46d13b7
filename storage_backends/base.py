"""The storage backend interface: a small async key/value store with streaming.

Paths are '/'-separated keys relative to the backend's root ("docker/registry/v2/blobs/...").
The backend knows nothing about registries, digests or HTTP; `registry/paths.py` builds the keys.

Exceptions::

    StorageError
     ├── PathNotFound        the key (or prefix) does not exist
     ├── InvalidPath         the key is not a clean relative path
     ├── StorageUnavailable  the store cannot be reached, keeps failing, is gone (no bucket, no root directory) or
     │                       refuses us (access denied): a retry later may work without anything changing here
     └── StorageFull         the store has no room for what is being written (ENOSPC, EDQUOT, MinIO's
                             XMinioStorageFull): writes fail until space is freed; reads still work

A failed write leaves nothing behind that a reader could see, whichever of these it raises.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import BinaryIO

DEFAULT_CHUNK_SIZE = 1024 * 1024


class StorageError(Exception):
    """Base class of every storage backend error."""


class PathNotFound(StorageError):
    def __init__(self, path: str) -> None:
        super().__init__(f"path not found: {path}")
        self.path = path


class InvalidPath(StorageError):
    def __init__(self, path: str) -> None:
        super().__init__(f"invalid storage path: {path!r}")
        self.path = path


class StorageUnavailable(StorageError):
    """The store failed in a way a retry later may fix (down, throttling, timeouts, bucket gone, access denied).

    `reason` is short and safe to show a client (no endpoint, bucket name or path); the message has the details.
    """

    def __init__(self, message: str, reason: str = "the store does not answer or keeps failing") -> None:
        super().__init__(message)
        self.reason = reason


class StorageFull(StorageError):
    """The store has no space (or no quota) left for a write; nothing of the write is visible."""


@dataclass(frozen=True, slots=True)
class FileInfo:
    path: str
    size: int
    modified: dt.datetime
    is_dir: bool = False


def check_path(path: str) -> str:
    """Reject keys that could escape the root or that no backend can represent."""
    if not path or path.startswith("/") or path.endswith("/") or "\\" in path or "\x00" in path:
        raise InvalidPath(path)
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise InvalidPath(path)
    return path


class Writer(abc.ABC):
    """Streams content to one key. Nothing is visible at the key until `commit` succeeds."""

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """Bytes written so far."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def commit(self) -> bool:
        """Make the content visible. False when the writer is exclusive and the key already existed."""

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Discard everything written; idempotent, and harmless after commit."""

    async def __aenter__(self) -> Writer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.cancel()


class StorageBackend(abc.ABC):
    name: str = "abstract"
    links: bool = False
    """Whether `link` is offered: a second name for the very object a path names, without a copy."""

    @property
    def exclusive_writes(self) -> bool:
        """Whether `exclusive` writes are atomic: of two creations of one name racing, one fails. Where not (an S3
        store without conditional writes checks, then writes), both may succeed, the later one's bytes staying."""
        return True

    @abc.abstractmethod
    async def get_content(self, path: str) -> bytes:
        """The whole content of a small object. Raises PathNotFound."""

    @abc.abstractmethod
    async def put_content(self, path: str, data: bytes, exclusive: bool = False, durable: bool = True) -> bool:
        """Atomically store `data`. With `exclusive`, only if absent: returns False when it existed. Without
        `durable`, a power failure right after may lose the write (never tear it): for hints that something else
        can rebuild (change records, history), where the cost of flushing to disk is not worth it."""

    @abc.abstractmethod
    def reader(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream `length` bytes (default: to the end) from `offset`. Raises PathNotFound on first iteration."""

    @abc.abstractmethod
    async def writer(self, path: str, exclusive: bool = False) -> Writer: ...

    @abc.abstractmethod
    async def stat(self, path: str) -> FileInfo:
        """Size and modification time of an object, or a directory-like prefix. Raises PathNotFound."""

    @abc.abstractmethod
    async def list(self, path: str) -> list[FileInfo]:
        """Immediate children of a prefix, sorted by path. Raises PathNotFound if the prefix is empty."""

    @abc.abstractmethod
    def walk(self, path: str, start_after: str | None = None) -> AsyncIterator[FileInfo]:
        """Every object (not directory) under a prefix, in lexical path order, strictly after `start_after`."""

    @abc.abstractmethod
    async def copy(self, src: str, dst: str, exclusive: bool = False) -> bool:
        """Copy an object. With `exclusive`, returns False (and copies nothing) when `dst` existed."""

    @abc.abstractmethod
    async def move(self, src: str, dst: str, exclusive: bool = False) -> bool:
        """Move an object. With `exclusive` and an existing `dst`, leaves `src` in place and returns False."""

    async def link(self, src: str, dst: str) -> bool:
        """Give the object `src` names a second name, `dst` (both stay); False when `dst` existed. Only where
        `links` is set: the object at `dst` is then the one that was at `src`, whatever `src` names later."""
        raise NotImplementedError(f"{self.name} storage has no links")

    @abc.abstractmethod
    async def delete(self, path: str) -> None:
        """Delete an object or everything under a prefix. Deleting what is absent is not an error."""

    async def delete_file(self, path: str) -> None:
        """Delete one object, and nothing under `path` as a prefix: for a path known to name a file, where `delete`
        would also list the prefix (one request on S3 where `delete` makes two). Deleting what is absent is not an
        error."""
        await self.delete(path)

    async def touch(self, path: str) -> None:
        """Refresh the modification time of an object (GC grace periods read it). Raises PathNotFound."""
        await self.stat(path)

    async def redirect_url(self, path: str, method: str = "GET") -> str | None:
        """A URL the client can fetch the object from directly, or None to serve it ourselves."""
        return None

    async def open_file(self, path: str) -> BinaryIO | None:
        """The object as a regular file open for reading, for a server to hand to the kernel (sendfile) without
        reading it; None where objects are not files (object stores, memory). The caller closes it. Raises
        PathNotFound."""
        return None

    async def purge_abandoned_writes(self, older_than: float, dry_run: bool = False) -> int:
        """Remove what interrupted writes left behind (a crashed process's temporary files, incomplete multipart
        uploads) started more than `older_than` seconds ago; returns how many (with `dry_run`: how many would go).
        Committed content is never touched. A backend whose writes leave nothing behind removes nothing."""
        return 0

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Check the store is usable; called once before serving. Raises StorageError."""

    async def check(self) -> None:
        """One cheap call that needs the store to answer (readiness probes, the availability gauge).

        Raises StorageUnavailable when the store is unreachable, gone or refuses us. A backend that can ask its
        store something more telling (S3: HeadBucket) overrides this: a missing key answers as well from a
        deleted bucket as from a healthy one.
        """
        await self.exists("moorage/readiness-probe")

    async def free_bytes(self) -> int | None:
        """Space left for writes, where the store has such a limit (a filesystem); None when it has not."""
        return None

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections and threads."""

    async def exists(self, path: str) -> bool:
        try:
            await self.stat(path)
        except PathNotFound:
            return False
        return True
