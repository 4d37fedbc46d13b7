"""Zero-copy sends, the server's side: the ASGI "Zero Copy Send" extension (registry/zero_copy.py) served on
uvicorn's httptools protocol with sendfile(2).

The bytes go from the page cache to the socket without entering the process, which then costs a few system calls
per socket buffer instead of a read, a copy and a write per chunk. The extension is offered (`scope["extensions"]`)
only on plain-text connections (TLS has to encrypt in user space) and only to requests that can use it
(`offers_zero_copy`), so that the hot path of small requests is unchanged.

The socket belongs to the event loop's transport. Before the first sendfile, whatever the transport still buffers
(the response head, the end of an earlier response) is flushed; while the range is being sent nothing else writes
to the connection (the application is waiting on this send); writability is awaited on a duplicate of the socket's
descriptor, which the event loop lets us watch. A sendfile whose bytes are in the page cache runs on the event
loop (a probe read with RWF_NOWAIT tells); one that has to read from the disk runs on a thread, so that the disk
does not stall every other connection of the process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import os
from collections.abc import Mapping
from typing import Any, BinaryIO

from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, ASGISendEvent
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from registry.zero_copy import ZERO_COPY_SEND

# How long a send waits for the socket to take more before it looks whether the connection was closed meanwhile
# (the duplicate descriptor keeps the socket open, so a close by the server does not wake the wait).
CLOSED_POLL_SECONDS = 1.0
# At most this much per sendfile call (the socket takes at most its buffer's worth anyway): the page-cache probe
# looks this far ahead.
CALL_BYTES = 4 * 1024 * 1024
# Threads per process for sendfiles that read from the disk.
DISK_THREADS = 4
_PEER_GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN})
_probe = bytearray(1)  # the page-cache probe reads into it, on the event loop's thread only
_disk_pool: concurrent.futures.ThreadPoolExecutor | None = None


def offers_zero_copy(scope: Mapping[str, Any]) -> bool:
    """Which requests are offered the extension: blob GETs (the only responses that use it)."""
    return scope["method"] == "GET" and "/blobs/" in scope["path"]


def with_zero_copy(app: ASGI3Application, cycle: RequestResponseCycle) -> ASGI3Application:
    """`app` for one request of a plain-text connection, its scope offering zero-copy sends served on `cycle`."""
    cycle.scope.setdefault("extensions", {})[ZERO_COPY_SEND] = {}

    async def sending_files(scope: Any, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        async def send_or_sendfile(message: ASGISendEvent) -> None:
            if message["type"] == ZERO_COPY_SEND:
                await send_file(cycle, message)
            else:
                await send(message)

        await app(scope, receive, send_or_sendfile)

    return sending_files


async def send_file(cycle: RequestResponseCycle, message: Mapping[str, Any]) -> None:
    """One zero-copy send on `cycle`'s connection: what `cycle.send` does for a body, with sendfile(2)."""
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
        sent = await _sendfile(cycle, file.fileno(), offset, count)
        cycle.expected_content_length -= sent
        if sent < count:  # the connection went away, or the file is shorter than the range it promised
            if not cycle.disconnected:
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


def _cached(file_fd: int, offset: int, count: int) -> bool:
    """Whether the range's last byte is in the page cache: a read of it that would wait for the disk fails. Blobs
    are written and read front to back, so the bytes before it are almost always there too."""
    try:
        return os.preadv(file_fd, [_probe], offset + count - 1, os.RWF_NOWAIT) == 1
    except OSError:  # BlockingIOError: not cached; anything else: let the thread's sendfile report it
        return False


def _disk_reads() -> concurrent.futures.ThreadPoolExecutor:
    global _disk_pool
    if _disk_pool is None:
        _disk_pool = concurrent.futures.ThreadPoolExecutor(DISK_THREADS, thread_name_prefix="moorage-sendfile")
    return _disk_pool


async def _sendfile(cycle: RequestResponseCycle, file_fd: int, offset: int, count: int) -> int:
    """Send `count` bytes of `file_fd` from `offset` on the cycle's socket; returns how many went (fewer when the
    connection is gone or the file ends early)."""
    await _flushed(cycle)
    transport = cycle.transport
    if cycle.disconnected or transport.is_closing():
        return 0
    loop = asyncio.get_running_loop()
    # Our own descriptor for the socket: the transport closes its own when the connection is lost or cut, and the
    # number may then be reused by another connection at once; a sendfile must never write there.
    sock_fd = os.dup(transport.get_extra_info("socket").fileno())
    on_thread: concurrent.futures.Future[int] | None = None
    sent = 0
    try:
        while sent < count:
            if cycle.disconnected or transport.is_closing():
                return sent
            at, size = offset + sent, min(count - sent, CALL_BYTES)
            try:
                if _cached(file_fd, at, size):  # memory to socket: cheaper here than a thread's round trip
                    n = os.sendfile(sock_fd, file_fd, at, size)
                else:  # the disk reads on a thread; the event loop serves everyone else meanwhile
                    on_thread = _disk_reads().submit(os.sendfile, sock_fd, file_fd, at, size)
                    n = await asyncio.wrap_future(on_thread)
                    on_thread = None
            except BlockingIOError:
                on_thread = None
                await _writable(loop, sock_fd)
                continue
            except OSError as e:
                if e.errno in _PEER_GONE:
                    return sent
                raise
            if n == 0:
                return sent  # the file ended before the range did
            sent += n
    finally:
        if on_thread is not None and not on_thread.done():  # cancelled while the thread is in sendfile
            on_thread.add_done_callback(lambda _: os.close(sock_fd))
        else:
            os.close(sock_fd)
    return sent


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
