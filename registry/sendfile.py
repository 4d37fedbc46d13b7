"""Zero-copy sends, the server's side: the ASGI "Zero Copy Send" extension (registry/zero_copy.py) served on
uvicorn's httptools protocol with sendfile(2).

The bytes go from the page cache to the socket without entering the process, which then costs a few system calls
per socket buffer instead of a read, a copy and a write per chunk. The extension is offered (`scope["extensions"]`)
only on plain-text connections (TLS has to encrypt in user space) and only to requests that can use it
(`offers_zero_copy`), so that the hot path of small requests is unchanged.

The socket belongs to the event loop's transport. Before the first sendfile, whatever the transport still buffers
(the response head, the end of an earlier response) is flushed; while the range is being sent nothing else writes
to the connection (the application is waiting on this send); writability is awaited on a duplicate of the socket's
descriptor, which the event loop lets us watch. A sendfile whose bytes are all in the page cache runs on the event
loop (cachestat(2) tells); one that has to read from the disk runs on a thread, so that the disk does not stall
every other connection of the process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import errno
import logging
import mmap
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO, cast

from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, ASGISendEvent
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from registry.zero_copy import ZERO_COPY_SEND

logger = logging.getLogger("moorage.http")

# How long a send waits for the socket to take more before it looks whether the connection was closed meanwhile
# (the duplicate descriptor keeps the socket open, so a close by the server does not wake the wait).
CLOSED_POLL_SECONDS = 1.0
# At most this much per sendfile call (the socket takes at most its buffer's worth anyway): cachestat looks this
# far ahead.
CALL_BYTES = 4 * 1024 * 1024
# Without cachestat, what two probe reads vouch for: a sendfile of it that meets the disk stalls the loop briefly.
PROBED_WINDOW = 256 * 1024
CACHESTAT = 451  # the same number on every Linux architecture (asm-generic)
PAGE = mmap.PAGESIZE
# Threads per process for sendfiles that read from the disk.
DISK_THREADS = 4
_PEER_GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN})
_probe = bytearray(1)  # page-cache probes read into it, on the event loop's thread only
_disk_pool: concurrent.futures.ThreadPoolExecutor | None = None


def offers_zero_copy(scope: Mapping[str, Any]) -> bool:
    """Which requests are offered the extension: blob GETs (the only responses that use it)."""
    return scope["method"] == "GET" and "/blobs/" in scope["path"]


def with_zero_copy(
    app: ASGI3Application, cycle: RequestResponseCycle, waiting: Callable[[bool], None]
) -> ASGI3Application:
    """`app` for one request of a plain-text connection, its scope offering zero-copy sends served on `cycle`.
    `waiting(True)` is called when a send waits for the client to take more, `waiting(False)` when it took some:
    the connection's protocol cuts a client that stopped reading."""
    cycle.scope.setdefault("extensions", {})[ZERO_COPY_SEND] = {}

    async def sending_files(scope: Any, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        async def send_or_sendfile(message: ASGISendEvent) -> None:
            if message["type"] == ZERO_COPY_SEND:
                await send_file(cycle, cast(dict[str, Any], message), waiting)
            else:
                await send(message)

        await app(scope, receive, send_or_sendfile)

    return sending_files


async def send_file(cycle: RequestResponseCycle, message: dict[str, Any], waiting: Callable[[bool], None]) -> None:
    """One zero-copy send on `cycle`'s connection: what `cycle.send` does for a body, with sendfile(2). How many
    bytes went is left in `message["sent"]` (fewer than `count` when the client went away), for the access log."""
    message["sent"] = 0
    if cycle.disconnected:
        return
    if not cycle.response_started or cycle.response_complete:
        raise RuntimeError(f"{ZERO_COPY_SEND} outside a response body")
    if cycle.chunked_encoding:
        raise RuntimeError(f"{ZERO_COPY_SEND} needs a response with a Content-Length")
    file: BinaryIO = message["file"]
    offset = int(message.get("offset") or 0)
    count = message.get("count")
    if count is None:
        count = os.fstat(file.fileno()).st_size - offset
    more_body = bool(message.get("more_body", False))
    if cycle.scope["method"] == "HEAD":
        cycle.expected_content_length = 0
    elif count:
        if count > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        sent, outcome = await _sendfile(cycle, file.fileno(), offset, count, waiting)
        message["sent"] = sent
        cycle.expected_content_length -= sent
        if outcome is not None:
            if outcome == _FILE_ENDED:
                logger.error(
                    "%s %s: the file ended %d bytes into a range of %d: connection cut",
                    cycle.scope["method"], cycle.scope["path"], sent, count,
                )  # fmt: skip
            # The client cannot be told; the connection is cut so that it sees a short response, never the next
            # response's bytes as the rest of this one. Nothing more is sent on this cycle.
            cycle.disconnected = True
            cycle.transport.abort()
            return
    if not more_body:
        if cycle.expected_content_length != 0:
            raise RuntimeError("Response content shorter than Content-Length")
        cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            cycle.transport.close()
        cycle.on_response()


async def _flushed(cycle: RequestResponseCycle) -> None:
    """Wait until the transport has written everything it buffers, so that sendfile's bytes come after it."""
    transport = cycle.transport
    if not transport.get_write_buffer_size():
        return
    low, high = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=0, low=0)  # pauses the protocol now, resumes it once all is written
    try:
        await cycle.flow.drain()
    finally:
        if not transport.is_closing():
            transport.set_write_buffer_limits(high=high, low=low)


class _CacheStatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _CacheStat(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("cache", "dirty", "writeback", "evicted", "recently_evicted")]


def _cachestat_call() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    syscall: Callable[..., int] = libc.syscall
    syscall.restype = ctypes.c_long  # type: ignore[attr-defined]
    return syscall


_syscall = _cachestat_call()


def _loop_bytes(file_fd: int, offset: int, count: int) -> int:
    """How many of the `count` bytes at `offset` are known to be in the page cache, so that sendfile can send them
    from the event loop without waiting for the disk; 0: send from a thread.

    cachestat(2) (Linux 6.5) counts the cached pages of the whole window. Without it, a read with RWF_NOWAIT (which
    fails rather than wait) probes the first and last byte of a small window; without that, everything goes to the
    thread."""
    global _syscall
    if count <= 0:
        return 0
    if _syscall is not None:
        window, stat = _CacheStatRange(offset, count), _CacheStat()
        if _syscall(CACHESTAT, file_fd, ctypes.byref(window), ctypes.byref(stat), 0) == 0:
            pages = (offset + count - 1) // PAGE - offset // PAGE + 1
            return count if stat.cache >= pages else 0
        if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):  # an older kernel, or a seccomp filter
            _syscall = None
        else:
            return 0
    nowait = getattr(os, "RWF_NOWAIT", None)
    if nowait is None:
        return 0
    count = min(count, PROBED_WINDOW)
    try:
        cached = os.preadv(file_fd, [_probe], offset, nowait) == 1
        return count if cached and os.preadv(file_fd, [_probe], offset + count - 1, nowait) == 1 else 0
    except OSError:  # BlockingIOError: not cached; anything else: the thread's sendfile reports it
        return 0


def _disk_reads() -> concurrent.futures.ThreadPoolExecutor:
    global _disk_pool
    if _disk_pool is None:
        _disk_pool = concurrent.futures.ThreadPoolExecutor(DISK_THREADS, thread_name_prefix="moorage-sendfile")
    return _disk_pool


_PEER_LEFT = "peer left"
_FILE_ENDED = "file ended"


async def _sendfile(
    cycle: RequestResponseCycle, file_fd: int, offset: int, count: int, waiting: Callable[[bool], None]
) -> tuple[int, str | None]:
    """Send `count` bytes of `file_fd` from `offset` on the cycle's socket. Returns how many went and, when not
    all, why (_PEER_LEFT: the connection is gone or closing; _FILE_ENDED: the file is shorter than the range)."""
    await _flushed(cycle)
    transport = cycle.transport
    if cycle.disconnected or transport.is_closing():
        return 0, _PEER_LEFT
    loop = asyncio.get_running_loop()
    # Our own descriptors, for the socket and (for a thread) the file: the transport closes its own when the
    # connection is lost or cut, the application closes the file when this send ends or is cancelled, and a
    # number may then be reused at once by another connection or file. A sendfile must never use one of those.
    sock_fd = os.dup(transport.get_extra_info("socket").fileno())
    thread_file_fd: int | None = None
    on_thread: concurrent.futures.Future[int] | None = None
    sent = 0
    try:
        while sent < count:
            if cycle.disconnected or transport.is_closing():
                return sent, _PEER_LEFT
            at, size = offset + sent, min(count - sent, CALL_BYTES)
            try:
                if here := _loop_bytes(file_fd, at, size):  # memory to socket: no thread round trip
                    n = os.sendfile(sock_fd, file_fd, at, here)
                else:  # the disk reads on a thread; the event loop serves everyone else meanwhile
                    if thread_file_fd is None:
                        thread_file_fd = os.dup(file_fd)
                    on_thread = _disk_reads().submit(os.sendfile, sock_fd, thread_file_fd, at, size)
                    n = await asyncio.wrap_future(on_thread)
                    on_thread = None
            except BlockingIOError:
                on_thread = None
                waiting(True)
                await _writable(loop, sock_fd)
                continue
            except OSError as e:
                if e.errno in _PEER_GONE:
                    return sent, _PEER_LEFT
                raise
            if n == 0:
                return sent, _FILE_ENDED
            waiting(False)
            sent += n
    finally:
        mine = [fd for fd in (sock_fd, thread_file_fd) if fd is not None]
        if on_thread is not None and not on_thread.done():  # cancelled while the thread is in sendfile
            on_thread.add_done_callback(lambda _: _close_all(mine))
        else:
            _close_all(mine)
    return sent, None


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> bool:
    """Whether `fd` became writable within CLOSED_POLL_SECONDS."""
    ready: asyncio.Future[bool] = loop.create_future()

    def settle(value: bool) -> None:
        if not ready.done():
            ready.set_result(value)

    loop.add_writer(fd, settle, True)
    timer = loop.call_later(CLOSED_POLL_SECONDS, settle, False)
    try:
        return await ready
    finally:
        timer.cancel()
        loop.remove_writer(fd)
