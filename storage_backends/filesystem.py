"""Filesystem storage: keys are files under a root directory.

Writes go to a temporary file under `<root>/.moorage-tmp/` and become visible with one atomic
`rename` (or `link`, when the write must not replace an existing file), so a reader never sees
half-written content and a crash leaves only temporary files behind. Recursive deletes are a
rename into the same directory followed by a removal, so they are atomic too.

A write that fails (a full disk, most often) removes its temporary file before it raises. Operating-system
errors that say something about the store rather than the key become storage errors: no space (ENOSPC,
EDQUOT) is StorageFull; a store that is failing or refusing us (EIO, EROFS, EACCES, a stale or disconnected
network mount), or a root directory that is gone, is StorageUnavailable.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import ctypes
import ctypes.util
import datetime as dt
import errno
import itertools
import logging
import os
import shutil
import stat as stat_module
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import BinaryIO, TypeVar

import aiofiles
import aiofiles.os
from aiofiles.threadpool.binary import AsyncBufferedIOBase

from storage_backends.base import (
    DEFAULT_CHUNK_SIZE,
    FileInfo,
    PathNotFound,
    StorageBackend,
    StorageError,
    StorageFull,
    StorageUnavailable,
    Writer,
    check_path,
)

T = TypeVar("T")
TMP_DIR = ".moorage-tmp"
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
UNAVAILABLE_ERRNOS = frozenset({errno.EIO, errno.EROFS, errno.EACCES, errno.ESTALE, errno.ENOTCONN})
ROOT_MISSING = "the storage root directory is missing"


def _translated(error: OSError) -> StorageError | None:
    """The storage error an operating-system error stands for; None when it is about the key, not the store."""
    if error.errno in FULL_ERRNOS:
        return StorageFull(f"filesystem: {error}")
    if error.errno in UNAVAILABLE_ERRNOS:
        return StorageUnavailable(f"filesystem: {error}", reason=f"the store fails: {os.strerror(error.errno)}")
    return None


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    try:
        yield
    except OSError as e:
        translated = _translated(e)
        if translated is None:
            raise
        raise translated from e


WALK_BATCH = 2048
WALK_FIRST_BATCH = 8


def _take(entries: Iterator[FileInfo], count: int) -> builtins.list[FileInfo]:
    return list(itertools.islice(entries, count))


def _info(path: str, st: os.stat_result) -> FileInfo:
    is_dir = stat_module.S_ISDIR(st.st_mode)
    modified = dt.datetime.fromtimestamp(st.st_mtime, tz=dt.UTC)
    return FileInfo(path=path, size=0 if is_dir else st.st_size, modified=modified, is_dir=is_dir)


# A durable write hands what it wrote to the disk's writeback every WRITEBACK_STEP bytes, and every FLUSH_STEP bytes
# starts an fdatasync on a thread while the stream goes on (the next one waits for it, so the stream runs no faster
# than the disk and dirty pages stay bounded). The fsync at commit then has at most about FLUSH_STEP left. On this
# project's VM the disk's cache flush, not the writeback, is the slow part: waiting for each window's writeback
# (sync_file_range) and one fsync at commit left up to 1 GiB for that flush, 0.5-1 s after the last byte. A 1 GiB
# upload with two workers, eight rounds paired with that way: median 435 -> 470 MB/s (every 16 or 32 MiB: the same).
WRITEBACK_STEP = 16 * 1024 * 1024
FLUSH_STEP = 64 * 1024 * 1024
logger = logging.getLogger("moorage")
# Linux's sync_file_range(2), through libc (Python's `os` has no binding): start the writeback of a range. None where
# libc has no such call; switched off for the process when the kernel refuses it.
_START_WRITE = 2  # SYNC_FILE_RANGE_WRITE
_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.EOPNOTSUPP, errno.ESPIPE})


def _libc_sync_file_range() -> Callable[[int, int, int, int], None] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    call.restype = ctypes.c_int

    def sync_file_range(fd: int, offset: int, length: int, flags: int) -> None:
        if call(fd, offset, length, flags) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return sync_file_range


_sync_file_range = _libc_sync_file_range()


class FilesystemWriter(Writer):
    def __init__(
        self, backend: FilesystemBackend, path: str, exclusive: bool, file: AsyncBufferedIOBase, tmp_path: str
    ) -> None:
        self._backend = backend
        self._path = path
        self._exclusive = exclusive
        self._file = file
        self._tmp_path = tmp_path
        self._size = 0
        self._done = False
        self._written_back = 0  # bytes handed to the disk's writeback so far (see `_write_back`)
        self._flushed_to = 0  # bytes the last flush started on covers
        self._flush: asyncio.Future[None] | None = None  # that flush, while not yet waited for
        self._handing_over: asyncio.Future[None] | None = None  # a sync_file_range on a thread, while it runs

    @property
    def size(self) -> int:
        return self._size

    async def _write_back(self) -> None:
        """Hand what was written since the last step to the disk's writeback, and every FLUSH_STEP bytes start a
        flush of it all (once the one before has ended): the stream and the disk's flushes overlap, and the fsync at
        commit has little left."""
        global _sync_file_range
        await self._file.flush()
        if self._done:  # cancelled meanwhile (by another task): the file is closed, its descriptor not ours
            return
        fd = self._file.fileno()
        start, end = self._written_back, self._size
        self._written_back = end
        sync_file_range = _sync_file_range
        if sync_file_range is not None:
            call = self._handing_over = asyncio.ensure_future(
                self._backend._run(sync_file_range, fd, start, end - start, _START_WRITE)
            )
            try:
                await _thread_call_done(call)
            except OSError as e:
                if e.errno not in _UNSUPPORTED:
                    raise  # EIO, ENOSPC: the write failed
                logger.info(
                    "filesystem: sync_file_range unavailable (%s): durable writes flush every %d bytes", e, FLUSH_STEP
                )
                _sync_file_range = None
            finally:
                self._handing_over = None
        if end - self._flushed_to >= FLUSH_STEP:
            await self._flushed()
            if self._done:
                return
            self._flush = asyncio.ensure_future(self._backend._run(os.fdatasync, fd))
            self._flushed_to = end

    async def _flushed(self) -> None:
        """Wait for the flush under way, if any; its failure (EIO, ENOSPC) is the write's."""
        flush, self._flush = self._flush, None
        if flush is not None:
            await _thread_call_done(flush)

    async def write(self, data: bytes) -> None:
        if self._done:
            raise StorageError(f"write after commit or cancel: {self._path}")
        try:
            with _store_errors():
                await self._file.write(data)
                self._size += len(data)
                if self._backend.fsync and self._size - self._written_back >= WRITEBACK_STEP:
                    await self._write_back()
        except BaseException:
            # A full disk fails the write part-way: the temporary file goes now, whatever the caller does next.
            await self.cancel()
            raise

    async def commit(self) -> bool:
        if self._done:
            raise StorageError(f"commit after commit or cancel: {self._path}")
        try:
            with _store_errors():
                # Buffered bytes reach the disk here: a full disk may fail the flush, the fsync or the close.
                await self._file.flush()
                await self._flushed()
                if self._backend.fsync:
                    await aiofiles.os.wrap(os.fsync)(self._file.fileno())
                await self._file.close()
        except BaseException:
            await self.cancel()
            raise
        self._done = True
        return await self._backend._publish(self._tmp_path, self._path, self._exclusive)

    async def cancel(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            try:
                # Not closed under a thread's call on its descriptor (the number could be reused at once).
                if self._handing_over is not None:
                    with contextlib.suppress(OSError):
                        await _thread_call_done(self._handing_over)
                with contextlib.suppress(OSError):
                    await self._flushed()
            finally:
                # Closing flushes what is buffered, which fails again on a full disk: the file goes all the same.
                with contextlib.suppress(OSError):
                    await self._file.close()
        finally:
            await self._backend._run(_unlink_quietly, self._tmp_path)


async def _thread_call_done(call: asyncio.Future[T]) -> T:
    """The result of a call running on a thread on a file, waited for to its end even when the caller is cancelled
    (once or more): the file must not be closed (and its descriptor reused) under the call."""
    interrupted: asyncio.CancelledError | None = None
    while not call.done():
        try:
            await asyncio.shield(call)
        except asyncio.CancelledError as e:
            interrupted = e
    if interrupted is not None:
        if not call.cancelled():
            call.exception()  # retrieved: the cancellation is what the caller hears of
        # The cancellation itself, its message kept: anyio's cancel scopes (Starlette's) tell theirs by it.
        raise interrupted
    return call.result()


def _open_unbuffered(path: str) -> BinaryIO:
    return open(path, "rb", buffering=0)


def _close_opened(opening: asyncio.Future[BinaryIO]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


_RACE_RETRIES = 10


def _place(src: str, dst: str, exclusive: bool, root: str) -> bool:
    """Rename `src` to `dst` (or hard-link it, when `exclusive`: False if `dst` exists), creating parents.

    A concurrent recursive delete of an ancestor can remove the parent directory between `makedirs` and
    the rename (FileNotFoundError), or between makedirs' mkdir and its own check (FileExistsError): retry, unless
    `src` is gone too (FileNotFoundError for `src`, whichever error the race showed).
    """
    for attempt in range(1, _RACE_RETRIES + 1):
        try:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if not exclusive:
                os.replace(src, dst)
                return True
            try:
                os.link(src, dst)
            except FileExistsError:
                return False
            return True
        except (FileNotFoundError, FileExistsError) as e:
            if not os.path.lexists(src):
                # The source went with its directory (a session deleted under a completion): whichever of the two
                # errors the race showed, the caller's answer is "no such source".
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), src) from e
            if attempt == _RACE_RETRIES:
                raise
        except OSError as e:
            if e.errno in FULL_ERRNOS:
                # No room for a new directory: drop the ones this call made, so no empty repository or link
                # directory shows up in a listing for a write that did not happen.
                _remove_empty_parents(os.path.dirname(dst), stop=root)
            raise
    raise AssertionError("unreachable")


def _remove_empty_parents(directory: str, stop: str) -> None:
    """rmdir `directory` and its parents while they are empty, up to (not including) `stop`.

    A concurrent writer that just made one of them sees FileNotFoundError in `_place` and makes it again.
    """
    while directory.startswith(stop + os.sep):
        try:
            os.rmdir(directory)
        except OSError:
            return
        directory = os.path.dirname(directory)


class FilesystemBackend(StorageBackend):
    name = "filesystem"
    links = True

    def __init__(self, root: str | os.PathLike[str], fsync: bool = True) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.fsync = fsync
        self._tmp_root = os.path.join(self.root, TMP_DIR)
        os.makedirs(self._tmp_root, exist_ok=True)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def _full(self, path: str) -> str:
        return os.path.join(self.root, check_path(path))

    def _new_tmp(self) -> str:
        return os.path.join(self._tmp_root, uuid.uuid4().hex)

    def _open_tmp_sync(self) -> tuple[str, BinaryIO]:
        """A new temporary file, open for writing."""
        tmp = self._new_tmp()
        try:
            return tmp, open(tmp, "wb")
        except FileNotFoundError:
            self._repair_tmp_dir()
            return tmp, open(tmp, "wb")

    def _repair_tmp_dir(self) -> None:
        """The temporary directory is gone: the root went away (StorageUnavailable), or came back without it (a
        volume remounted, a directory restored) and we carry on in a new one."""
        if not os.path.isdir(self.root):
            raise StorageUnavailable(f"filesystem: storage root {self.root} is missing", reason=ROOT_MISSING)
        os.makedirs(self._tmp_root, exist_ok=True)

    def _missing(self, path: str) -> StorageError:
        """What a missing file means: nothing at that key, unless the whole root is gone (then nothing is known)."""
        if not os.path.isdir(self.root):
            return StorageUnavailable(f"filesystem: storage root {self.root} is missing", reason=ROOT_MISSING)
        return PathNotFound(path)

    async def check(self) -> None:
        with _store_errors():
            await self._run(self._check_sync)

    def _check_sync(self) -> None:
        if not os.path.isdir(self._tmp_root):
            self._repair_tmp_dir()

    async def free_bytes(self) -> int | None:
        with _store_errors():
            usage = await self._run(os.statvfs, self.root)
        # f_bavail: what an unprivileged writer may still use (root's reserved blocks excluded).
        return usage.f_bavail * usage.f_frsize

    async def purge_abandoned_writes(self, older_than: float, dry_run: bool = False) -> int:
        with _store_errors():
            return await self._run(self._purge_tmp_sync, older_than, dry_run)

    def _purge_tmp_sync(self, older_than: float, dry_run: bool) -> int:
        """Temporary files (and deleted trees moved aside) a crash left in the temporary directory; a live
        writer's file is as fresh as its last write, so an age far beyond any request's spares it."""
        cutoff = time.time() - older_than
        removed = 0
        with os.scandir(self._tmp_root) as entries:
            for entry in entries:
                try:
                    if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                        continue
                except FileNotFoundError:
                    continue
                if dry_run:
                    removed += 1
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    _unlink_quietly(entry.path)
                if not os.path.lexists(entry.path):
                    removed += 1
        return removed

    # -- small objects ---------------------------------------------------------------------------

    async def get_content(self, path: str) -> bytes:
        # Small objects (links, manifests) are read on the event loop: on a local disk that is a few
        # microseconds from the page cache, while a hop to the thread pool costs a hundred or more under load.
        with _store_errors():
            return self._get_content_sync(path)

    def _get_content_sync(self, path: str) -> bytes:
        try:
            with open(self._full(path), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise self._missing(path) from None

    async def put_content(self, path: str, data: bytes, exclusive: bool = False, durable: bool = True) -> bool:
        with _store_errors():
            return await self._run(self._put_content_sync, path, data, exclusive, durable and self.fsync)

    def _put_content_sync(self, path: str, data: bytes, exclusive: bool, fsync: bool) -> bool:
        full = self._full(path)
        if exclusive and os.path.lexists(full):
            return False
        tmp, f = self._open_tmp_sync()
        try:
            with f:
                f.write(data)
                if fsync:
                    f.flush()
                    os.fsync(f.fileno())
        except BaseException:
            _unlink_quietly(tmp)  # a full disk: no 0-byte or partial temporary file stays behind
            raise
        return self._publish_sync(tmp, path, exclusive)

    # -- streaming ---------------------------------------------------------------------------------

    async def reader(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        # The file is closed in any case, without a thread: a reader abandoned part-way (a client that went, a
        # cancellation delivered again and again, as anyio's cancel scopes do) must not leave it to the garbage
        # collector, nor close it under a read still running on a thread.
        f = await self.open_file(path)
        try:
            remaining = length
            while remaining is None or remaining > 0:
                size = DEFAULT_CHUNK_SIZE if remaining is None else min(DEFAULT_CHUNK_SIZE, remaining)
                reading = asyncio.ensure_future(self._run(os.pread, f.fileno(), size, offset))
                with _store_errors():
                    chunk = await _thread_call_done(reading)
                if not chunk:
                    break
                offset += len(chunk)
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            f.close()

    async def open_file(self, path: str) -> BinaryIO:
        full = self._full(path)
        opening = asyncio.ensure_future(self._run(_open_unbuffered, full))
        try:
            with _store_errors():
                return await asyncio.shield(opening)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise self._missing(path) from None
        except asyncio.CancelledError:
            # The caller went (a client that disconnected): the file the thread opens is nobody's, closed here
            # rather than whenever the garbage collector finds it.
            opening.add_done_callback(_close_opened)
            raise

    async def writer(self, path: str, exclusive: bool = False) -> Writer:
        check_path(path)
        tmp = self._new_tmp()
        with _store_errors():
            try:
                file = await aiofiles.open(tmp, "wb")
            except FileNotFoundError:
                await self._run(self._repair_tmp_dir)
                file = await aiofiles.open(tmp, "wb")
        return FilesystemWriter(self, path, exclusive, file, tmp)

    async def _publish(self, tmp: str, path: str, exclusive: bool) -> bool:
        with _store_errors():
            return await self._run(self._publish_sync, tmp, path, exclusive)

    def _publish_sync(self, tmp: str, path: str, exclusive: bool) -> bool:
        try:
            return _place(tmp, self._full(path), exclusive, self.root)
        finally:
            _unlink_quietly(tmp)

    # -- metadata ----------------------------------------------------------------------------------

    async def stat(self, path: str) -> FileInfo:
        try:
            with _store_errors():
                st = os.stat(self._full(path))  # a metadata call: inline, like get_content
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing(path) from None
        return _info(path, st)

    async def touch(self, path: str) -> None:
        try:
            with _store_errors():
                await self._run(os.utime, self._full(path))
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing(path) from None

    async def list(self, path: str) -> list[FileInfo]:
        with _store_errors():
            return await self._run(self._list_sync, path)

    def _list_sync(self, path: str) -> builtins.list[FileInfo]:
        full = self._full(path)
        entries = []
        try:
            with os.scandir(full) as it:
                for entry in it:
                    try:
                        entries.append(FileInfo(f"{path}/{entry.name}", *self._entry_fields(entry)))
                    except FileNotFoundError:
                        # Removed between the directory read and its stat: a sibling going away never fails
                        # or shrinks the rest of the listing (GC and the tags list read it while clients delete).
                        continue
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing(path) from None
        if not entries:
            raise PathNotFound(path)
        entries.sort(key=lambda e: e.path)
        return entries

    @staticmethod
    def _entry_fields(entry: os.DirEntry[str]) -> tuple[int, dt.datetime, bool]:
        st = entry.stat(follow_symlinks=True)
        info = _info(entry.name, st)
        return info.size, info.modified, info.is_dir

    async def walk(self, path: str, start_after: str | None = None) -> AsyncIterator[FileInfo]:
        # The whole subtree is read on a worker thread, WALK_BATCH entries per hop back to the event loop (one hop
        # per directory made a walk of 360,000 directories take a minute: eight times os.walk's time).
        # The first batches are small: a caller asking whether anything is there stops after one entry.
        entries = self._walk_sync(path, start_after)
        size = WALK_FIRST_BATCH
        while True:
            with _store_errors():
                batch = await self._run(_take, entries, size)
            for info in batch:
                yield info
            if len(batch) < size:
                return
            size = min(size * 4, WALK_BATCH)

    def _walk_sync(self, path: str, start_after: str | None) -> Iterator[FileInfo]:
        """The files under `path` in the lexical order of their keys (a directory sorts as "name/", so "a-b" comes
        before "a/x"), after `start_after`; a directory or file removed meanwhile is skipped, never an error."""
        full = self._full(path)
        children: builtins.list[tuple[str, str, os.stat_result | None]] = []
        try:
            with os.scandir(full) as it:
                for entry in it:
                    child = f"{path}/{entry.name}"
                    try:
                        if entry.is_dir():  # the directory entry's type: no stat for a directory
                            children.append((child + "/", child, None))
                        else:
                            children.append((child, child, entry.stat(follow_symlinks=True)))
                    except FileNotFoundError:
                        continue
        except (FileNotFoundError, NotADirectoryError):
            return
        children.sort(key=lambda item: item[0])
        for bound, child, st in children:
            is_dir = st is None
            if start_after is not None:
                if is_dir and not start_after.startswith(bound) and bound <= start_after:
                    continue
                if not is_dir and child <= start_after:
                    continue
            if st is None:
                yield from self._walk_sync(child, start_after)
            else:
                info = _info(child, st)
                if info.is_dir:  # a symbolic link to a directory: walked as the directory it names
                    yield from self._walk_sync(child, start_after)
                else:
                    yield info

    # -- whole-object operations ------------------------------------------------------------------

    async def copy(self, src: str, dst: str, exclusive: bool = False) -> bool:
        with _store_errors():
            return await self._run(self._copy_sync, src, dst, exclusive)

    def _copy_sync(self, src: str, dst: str, exclusive: bool) -> bool:
        full_src, full_dst = self._full(src), self._full(dst)  # validate both before creating a temp file
        if exclusive and os.path.lexists(full_dst):
            return False
        try:
            source = open(full_src, "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise self._missing(src) from None
        with source:
            tmp, target = self._open_tmp_sync()
            try:
                with target:
                    shutil.copyfileobj(source, target, DEFAULT_CHUNK_SIZE)
            except BaseException:
                _unlink_quietly(tmp)  # a full disk half-way through the copy
                raise
        return self._publish_sync(tmp, dst, exclusive)

    async def move(self, src: str, dst: str, exclusive: bool = False) -> bool:
        with _store_errors():
            return await self._run(self._move_sync, src, dst, exclusive)

    def _move_sync(self, src: str, dst: str, exclusive: bool) -> bool:
        full_src, full_dst = self._full(src), self._full(dst)
        if not os.path.isfile(full_src):
            raise self._missing(src)
        try:
            placed = _place(full_src, full_dst, exclusive, self.root)
        except FileNotFoundError:
            if os.path.lexists(full_src):
                raise
            raise PathNotFound(src) from None  # moved or deleted meanwhile
        if placed and exclusive:
            _unlink_quietly(full_src)
        return placed

    async def link(self, src: str, dst: str) -> bool:
        with _store_errors():
            return await self._run(self._link_sync, src, dst)

    def _link_sync(self, src: str, dst: str) -> bool:
        full_src, full_dst = self._full(src), self._full(dst)
        try:
            return _place(full_src, full_dst, True, self.root)  # a hard link: the same inode under both names
        except FileNotFoundError:
            if os.path.lexists(full_src):
                raise
            raise PathNotFound(src) from None

    async def delete(self, path: str) -> None:
        with _store_errors():
            await self._run(self._delete_sync, path)

    async def delete_file(self, path: str) -> None:
        with _store_errors():
            await self._run(self._delete_file_sync, path)

    def _delete_file_sync(self, path: str) -> None:
        try:
            os.unlink(self._full(path))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return  # absent, or a directory (no object of that name)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EISDIR):  # EPERM: some platforms' answer for a directory
                raise

    def _delete_sync(self, path: str) -> None:
        full = self._full(path)
        try:
            os.unlink(full)
            return
        except (FileNotFoundError, NotADirectoryError):
            return
        except IsADirectoryError:
            pass
        except OSError as e:  # EPERM on some platforms for directories
            if e.errno not in (errno.EPERM, errno.EISDIR):
                raise
        trash = self._new_tmp()
        try:
            os.rename(full, trash)
        except FileNotFoundError:
            return
        # A write whose path lookup raced the rename can still land in the trash after rmtree listed it
        # (rmdir then fails with ENOTEMPTY, ignored): go again so no such file is left behind.
        for _ in range(_RACE_RETRIES):
            shutil.rmtree(trash, ignore_errors=True)
            if not os.path.lexists(trash):
                return
