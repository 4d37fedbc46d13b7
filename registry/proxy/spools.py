"""Where a blob being fetched from an upstream waits for the clients reading it: in memory while the spools held
in memory stay within a budget, in a file on disk beyond it.

A spool on disk costs a second write of every cached blob (the store writes the first), its page-cache copy
and, later, the disk's writeback of it. A spool in memory keeps the buffers the fill received, as they are: no copy
at all, and readers keeping pace get the same objects. Measured with `bench/proxy.py`'s setup (a 1 GiB blob from
Distribution on 127.0.0.1, fetched cold through the cache by curl, 6 rounds): the server spent 2.7-3.8 CPU s (2.5-3.4 s
wall) with the spool in memory against 3.2-4.2 CPU s (2.7-3.6 s wall) with it on disk. The budget keeps that memory
bounded: it is taken from what this process may use (its cgroup's limit, else the machine's memory), and a fill that
does not fit in what is left spools on disk.
"""

from __future__ import annotations

import abc
import asyncio
import bisect
import collections
import contextlib
import os
import tempfile
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
RECENT_BUFFERS = 8  # a disk spool's last buffers, kept in memory for readers (8 MiB or so per fill)
DEFAULT_SHARE = 8  # the default budget: an eighth of the memory this process may use ...
DEFAULT_CAP = 2 * 1024**3  # ... and at most 2 GiB
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_UNLIMITED_V1 = 2**60  # cgroup v1 says "no limit" with a page-rounded LONG_MAX


class SpoolMemory:
    """The bytes this process's fills may hold in memory at once; reserved whole (a blob's announced size) before
    the first byte is spooled, released when the spool is closed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    def reserve(self, size: int) -> bool:
        if size <= 0 or self.in_use + size > self.limit:
            return False
        self.in_use += size
        return True

    def release(self, size: int) -> None:
        self.in_use = max(self.in_use - size, 0)


class Spool(abc.ABC):
    """A blob as it arrives, written once in order (each write right after the one before), read by any number of
    clients at their own pace; closed by the last of them."""

    in_memory: bool

    @abc.abstractmethod
    async def write(self, data: bytes, offset: int) -> None: ...

    @abc.abstractmethod
    def recent(self, position: int, end: int) -> bytes | None:
        """The bytes from `position` (to at most `end`, one buffer's worth at most) if they are at hand without
        reading anything back: the buffer as it was written when a reader takes it whole."""

    @abc.abstractmethod
    async def read(self, position: int, size: int) -> bytes:
        """Up to `size` bytes from `position`, which were written already."""

    @abc.abstractmethod
    def close(self) -> None: ...


def _offset(buffer: tuple[int, bytes]) -> int:
    return buffer[0]


def _slice(buffers: Sequence[tuple[int, bytes]], index: int, position: int, end: int) -> bytes:
    offset, data = buffers[index]
    if position == offset and offset + len(data) <= end:
        return data  # no copy: what a reader keeping pace (the usual case) gets
    return data[position - offset : end - offset]


class MemorySpool(Spool):
    """The buffers themselves, as the fill received them: nothing copied, nothing written anywhere."""

    in_memory = True

    def __init__(self, memory: SpoolMemory, reserved: int) -> None:
        # Released once: by `close`, or when the spool is collected without it (a reader never iterated).
        self._release = weakref.finalize(self, memory.release, reserved)
        self._buffers: list[tuple[int, bytes]] = []  # (offset, data), in order

    async def write(self, data: bytes, offset: int) -> None:
        self._buffers.append((offset, data))

    def recent(self, position: int, end: int) -> bytes | None:
        index = bisect.bisect_right(self._buffers, position, key=_offset) - 1
        if index < 0:
            return None
        offset, data = self._buffers[index]
        return _slice(self._buffers, index, position, end) if position < offset + len(data) else None

    async def read(self, position: int, size: int) -> bytes:
        data = self.recent(position, position + size)
        if not data:  # never written, or closed: a reader must not spin on nothing
            raise OSError(f"the spool holds nothing at {position}")
        return data

    def close(self) -> None:
        self._buffers = []
        self._release()


class DiskSpool(Spool):
    """An unnamed file in the spool directory; the last buffers written are kept at hand, so that readers keeping
    pace never read the file back."""

    in_memory = False

    def __init__(self, directory: Path | None) -> None:
        """In `directory` (default: the temp directory). Raises OSError (missing, full, not ours)."""
        self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 (closed by `close`)
        self._recent: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=RECENT_BUFFERS)

    async def write(self, data: bytes, offset: int) -> None:
        await _in_thread(self._write_all, data, offset)
        self._recent.append((offset, data))

    def _write_all(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:  # a write may take part of it (a disk filling up fails the next one)
            written = os.pwrite(self._file.fileno(), view, offset)
            view, offset = view[written:], offset + written

    def recent(self, position: int, end: int) -> bytes | None:
        for index in range(len(self._recent) - 1, -1, -1):
            offset, data = self._recent[index]
            if offset <= position < offset + len(data):
                return _slice(self._recent, index, position, end)
        return None

    async def read(self, position: int, size: int) -> bytes:
        data = await _in_thread(os.pread, self._file.fileno(), size, position)
        if not data:  # never written: a reader must not spin on nothing
            raise OSError(f"the spool holds nothing at {position}")
        return data

    def close(self) -> None:
        self._recent.clear()
        self._file.close()


async def _in_thread(function: Callable[..., T], *args: Any) -> T:
    """`function` on a thread; a cancelled caller still waits for it to return, so that the spool file is never
    closed (and its descriptor reused) under a read or write in flight."""
    call = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(call)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await call
        raise


def memory_spool(memory: SpoolMemory, size: int) -> MemorySpool | None:
    """A spool in memory for a blob of `size` bytes, if the budget has room for it; None otherwise."""
    if not memory.reserve(size):
        return None
    return MemorySpool(memory, size)


def default_budget(workers: int = 1) -> int:
    """An eighth of the memory this process may use, at most 2 GiB, shared by the server's `workers` processes (they
    share the limit: each takes its part)."""
    return min(usable_memory() // DEFAULT_SHARE, DEFAULT_CAP) // max(workers, 1)


def usable_memory() -> int:
    """The memory this process may use: the smallest limit of its cgroup and the cgroups above it (v2, or v1's
    memory controller), and the machine's memory."""
    limits = [_physical_memory()]
    with contextlib.suppress(OSError, ValueError):
        limits += _cgroup_limits(Path("/proc/self/cgroup").read_text())
    return min(limits)


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1024**3  # unknown: assume a small machine


def _cgroup_limits(membership: str, root: Path = _CGROUP_ROOT) -> list[int]:
    """The memory limits set on this process's cgroup and its ancestors, from /proc/self/cgroup's text."""
    limits: list[int] = []
    for line in membership.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2: memory.max in each directory on the way up
            base, limit_file = root, "memory.max"
        elif "memory" in controllers.split(","):  # v1: the memory controller's own hierarchy
            base, limit_file = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        if ".." in path.split("/"):  # never written by the kernel: nothing to read outside the hierarchy
            continue
        directory = base / path.strip("/")
        while True:
            value = _read_limit(directory / limit_file)
            if value is not None:
                limits.append(value)
            if directory == base or base not in directory.parents:
                break
            directory = directory.parent
    return limits


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():  # "max": none
        return None
    value = int(text)
    return None if value >= _UNLIMITED_V1 else value
